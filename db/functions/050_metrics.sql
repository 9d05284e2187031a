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

-- Honest numbers for an evaluation: intervals, the noise floor of ECE, and selective gain against its oracle.
-- Random draws come from a hash of (draw, item, stream), so the same answers give the same intervals in the
-- harness's report and in the analyst views.

-- A uniform number in [0, 1) from (a, b) in stream p_stream.
CREATE OR REPLACE FUNCTION reflect._uniform(p_a bigint, p_b bigint, p_stream bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT ((hashint8extended(p_a * 1000003 + p_b, p_stream) >> 11) & 9007199254740991)::double precision
         / 9007199254740992.0
$$;

-- The ECE a perfectly calibrated model with these confidences would show at this n (outcomes drawn as
-- Bernoulli(confidence), p_sims times): an observed ECE is read against its mean and 95th percentile.
CREATE OR REPLACE FUNCTION reflect.ece_floor_v1(p_confidence double precision[], p_sims integer DEFAULT 200,
                                                p_bins integer DEFAULT 10)
RETURNS TABLE (mean double precision, p95 double precision)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH d AS (
    SELECT row_number() OVER (ORDER BY i) AS i, c
    FROM unnest(p_confidence) WITH ORDINALITY AS t(c, i) WHERE c IS NOT NULL
  ), sims AS (
    SELECT s, reflect.ece_v1(array_agg(d.c), array_agg(reflect._uniform(s, d.i, 1) < d.c), p_bins) AS e
    FROM generate_series(1, p_sims) AS s CROSS JOIN d
    GROUP BY s
  )
  SELECT avg(e), percentile_cont(0.95) WITHIN GROUP (ORDER BY e) FROM sims
$$;

-- Percentile bootstrap 95% intervals of accuracy and of the AUROC of confidence for telling wrong answers
-- apart (resamples where one class is missing leave the AUROC's percentiles).
CREATE OR REPLACE FUNCTION reflect.bootstrap_v1(p_confidence double precision[], p_correct boolean[],
                                                p_resamples integer DEFAULT 1000)
RETURNS TABLE (accuracy_lo double precision, accuracy_hi double precision, auroc_lo double precision,
               auroc_hi double precision)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  WITH d AS (
    SELECT row_number() OVER (ORDER BY i) AS i, c, y
    FROM unnest(p_confidence, p_correct) WITH ORDINALITY AS t(c, y, i) WHERE c IS NOT NULL AND y IS NOT NULL
  ), n AS (
    SELECT count(*) AS n FROM d
  ), draws AS (
    SELECT b, 1 + floor(reflect._uniform(b, k, 2) * n.n)::bigint AS i
    FROM n, generate_series(1, p_resamples) AS b, generate_series(1, n.n) AS k
  ), per AS (
    SELECT b, avg(d.y::int)::double precision AS acc,
           reflect.auroc_v1(array_agg(1 - d.c), array_agg(NOT d.y)) AS auroc
    FROM draws JOIN d USING (i)
    GROUP BY b
  )
  SELECT percentile_cont(0.025) WITHIN GROUP (ORDER BY acc), percentile_cont(0.975) WITHIN GROUP (ORDER BY acc),
         percentile_cont(0.025) WITHIN GROUP (ORDER BY auroc), percentile_cont(0.975) WITHIN GROUP (ORDER BY auroc)
  FROM per
$$;

-- Everything an evaluation reports about one set of answers: accuracy and AUROC with bootstrap intervals,
-- ECE beside its noise floor, Brier, and the selective gain at p_coverage (accuracy on the most confident
-- share minus overall accuracy) as a share of the oracle's gain (min(1, accuracy / coverage) - accuracy).
CREATE OR REPLACE FUNCTION reflect.eval_metrics_v1(p_confidence double precision[], p_correct boolean[],
                                                   p_resamples integer DEFAULT 1000,
                                                   p_coverage double precision DEFAULT 0.8)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_n integer;
  v_acc double precision;
  v_cov double precision;
  v_oracle double precision;
  v_floor record;
  v_boot record;
BEGIN
  SELECT count(*), avg(y::int) INTO v_n, v_acc
  FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL;
  IF v_n = 0 THEN
    RETURN jsonb_build_object('n', 0);
  END IF;
  v_cov := reflect.accuracy_at_coverage_v1(p_confidence, p_correct, p_coverage);
  v_oracle := least(1.0, v_acc / p_coverage) - v_acc;
  SELECT * INTO v_floor FROM reflect.ece_floor_v1(
    ARRAY(SELECT c FROM unnest(p_confidence, p_correct) AS t(c, y) WHERE c IS NOT NULL AND y IS NOT NULL));
  SELECT * INTO v_boot FROM reflect.bootstrap_v1(p_confidence, p_correct, p_resamples);
  RETURN jsonb_build_object(
    'n', v_n,
    'accuracy', v_acc, 'accuracy_ci', jsonb_build_array(v_boot.accuracy_lo, v_boot.accuracy_hi),
    'mean_confidence', (SELECT avg(c) FROM unnest(p_confidence, p_correct) AS t(c, y)
                        WHERE c IS NOT NULL AND y IS NOT NULL),
    'auroc', (SELECT reflect.auroc_v1(array_agg(1 - c), array_agg(NOT y)) FROM unnest(p_confidence, p_correct) AS t(c, y)),
    'auroc_ci', jsonb_build_array(v_boot.auroc_lo, v_boot.auroc_hi),
    'ece', reflect.ece_v1(p_confidence, p_correct), 'ece_floor', v_floor.mean, 'ece_floor_p95', v_floor.p95,
    'brier', reflect.brier_v1(p_confidence, p_correct),
    'coverage', p_coverage, 'accuracy_at_coverage', v_cov,
    'selective_gain', v_cov - v_acc, 'oracle_gain', v_oracle,
    'selective_gain_share', CASE WHEN v_oracle > 0 THEN (v_cov - v_acc) / v_oracle END,
    'resamples', p_resamples);
END
$$;
