SET LOCAL ROLE reflect_owner;

-- Calibration metrics over arrays, shared by the calibrator fit and the analyst views. Pure functions.

-- Area under the ROC curve of `scores` for telling `positives` apart (Mann-Whitney U with average ranks
-- for ties). NULL when either class is empty.
CREATE OR REPLACE FUNCTION reflect.auroc_v1(p_scores double precision[], p_positives boolean[])
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH d AS (
    SELECT s, p FROM unnest(p_scores, p_positives) AS t(s, p) WHERE s IS NOT NULL AND p IS NOT NULL
  ), r AS (
    SELECT p, rank() OVER (ORDER BY s) + (count(*) OVER (PARTITION BY s) - 1) / 2.0 AS rk FROM d
  ), c AS (
    SELECT count(*) FILTER (WHERE p) AS n_pos, count(*) FILTER (WHERE NOT p) AS n_neg,
           sum(rk) FILTER (WHERE p) AS rank_sum
    FROM r
  )
  SELECT CASE WHEN n_pos = 0 OR n_neg = 0 THEN NULL
              ELSE ((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))::double precision END
  FROM c
$$;

-- Expected calibration error with p_bins equal-width confidence bins.
CREATE OR REPLACE FUNCTION reflect.ece_v1(p_confidence double precision[], p_correct boolean[],
                                          p_bins integer DEFAULT 10)
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH d AS (
    SELECT c, y::int AS y, least(floor(c * p_bins)::int, p_bins - 1) AS bin
    FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL
  )
  SELECT sum(abs(sum_c - sum_y)) / nullif(sum(n), 0)
  FROM (SELECT bin, count(*) AS n, sum(c) AS sum_c, sum(y) AS sum_y FROM d GROUP BY bin) b
$$;

CREATE OR REPLACE FUNCTION reflect.brier_v1(p_confidence double precision[], p_correct boolean[])
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT avg((c - y::int) ^ 2) FROM unnest(p_confidence, p_correct) AS t(c, y)
  WHERE c IS NOT NULL AND y IS NOT NULL
$$;

-- Accuracy on the most confident p_coverage share of answers (abstaining on the rest).
CREATE OR REPLACE FUNCTION reflect.accuracy_at_coverage_v1(p_confidence double precision[], p_correct boolean[],
                                                           p_coverage double precision DEFAULT 0.8)
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH d AS (
    SELECT y, row_number() OVER (ORDER BY c DESC) AS rn, count(*) OVER () AS n
    FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL
  )
  SELECT avg(y::int)::double precision FROM d WHERE rn <= greatest(1, ceil(p_coverage * n))
$$;

-- Solves a x = b (Gaussian elimination with partial pivoting); a is n x n.
CREATE OR REPLACE FUNCTION reflect._solve(a double precision[], b double precision[])
RETURNS double precision[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer := array_length(b, 1);
  piv integer;
  f double precision;
  tmp double precision;
  x double precision[] := array_fill(0::double precision, ARRAY[n]);
BEGIN
  FOR k IN 1..n LOOP
    piv := k;
    FOR i IN k + 1..n LOOP
      IF abs(a[i][k]) > abs(a[piv][k]) THEN piv := i; END IF;
    END LOOP;
    IF abs(a[piv][k]) < 1e-12 THEN
      RAISE EXCEPTION 'singular system in calibrator fit';
    END IF;
    IF piv <> k THEN
      FOR j IN 1..n LOOP
        tmp := a[k][j]; a[k][j] := a[piv][j]; a[piv][j] := tmp;
      END LOOP;
      tmp := b[k]; b[k] := b[piv]; b[piv] := tmp;
    END IF;
    FOR i IN k + 1..n LOOP
      f := a[i][k] / a[k][k];
      FOR j IN k..n LOOP
        a[i][j] := a[i][j] - f * a[k][j];
      END LOOP;
      b[i] := b[i] - f * b[k];
    END LOOP;
  END LOOP;
  FOR i IN REVERSE n..1 LOOP
    tmp := b[i];
    FOR j IN i + 1..n LOOP
      tmp := tmp - a[i][j] * x[j];
    END LOOP;
    x[i] := tmp / a[i][i];
  END LOOP;
  RETURN x;
END
$$;
