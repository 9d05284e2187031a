SET LOCAL ROLE reflect_owner;

-- Logistic regression with an L2 penalty on standardised features, by Newton-Raphson: the fit behind every
-- calibrator (a version's own labels in fit_calibrator_v1, the gate's scored answers in _gate_calibration).
-- Why logistic regression: it maps several signals to a probability at once, and with the few hundred
-- labels a local model gets it overfits less than isotonic regression, which is one-dimensional and needs
-- many labels per bin. x: one row per answer (NULL = signal not measured: it takes the training mean).
CREATE OR REPLACE FUNCTION reflect._fit_logistic(x double precision[], y boolean[], p_l2 double precision,
                                                 OUT means double precision[], OUT stds double precision[],
                                                 OUT weights double precision[], OUT iterations integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := coalesce(array_length(x, 2), 0);
BEGIN
  SELECT array_agg(coalesce(mean, 0) ORDER BY j), array_agg(sd ORDER BY j) INTO means, stds
  FROM (SELECT j, avg(x[i][j]) AS mean, coalesce(nullif(stddev_pop(x[i][j]), 0), 1) AS sd
        FROM generate_series(1, d) j, generate_series(1, n) i GROUP BY j) st;
  means := coalesce(means, '{}'); stds := coalesce(stds, '{}');
  SELECT f.weights, f.iterations INTO weights, iterations
  FROM reflect._fit_logistic_around(x, y, means, stds, array_fill(0::double precision, ARRAY[d + 1]), p_l2, 0) f;
END
$$;

-- The same fit on features standardised with given means and deviations, its penalty pulling the weights
-- towards p_anchor instead of zero (p_penalty: one per weight, the intercept's first): a
-- maximum a posteriori fit with the anchor as the prior's centre. With the anchor a calibrator fitted on
-- many answers elsewhere (the one pgreflect ships), a few of a user's own labels move it where their
-- traffic differs (mostly its base rate: the intercept) without the noise of a fit on those labels alone.
-- Newton steps are halved until the penalised log-loss falls: started from an anchor far from the labels
-- (confidences near 0 or 1, so almost no curvature), a full step overshoots and the fit diverged (seen on
-- 100 Wikidata labels around a calibrator that put them at 0.21 where 64% were right).
CREATE OR REPLACE FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[],
                                                        p_means double precision[], p_stds double precision[],
                                                        p_anchor double precision[], p_penalty double precision[],
                                                        OUT weights double precision[], OUT iterations integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := cardinality(p_means);
  zx double precision[] := '{}';  -- the standardised rows, a leading 1 for the intercept
  pen double precision[];
  g double precision[];
  h double precision[];
  xi double precision[];
  delta double precision[];
  trial double precision[];
  z double precision;
  p double precision;
  wt double precision;
  loss double precision;
  trial_loss double precision;
  step double precision;
BEGIN
  IF cardinality(p_anchor) <> d + 1 OR cardinality(p_stds) <> d OR (n > 0 AND array_length(x, 2) <> d)
     OR cardinality(p_penalty) <> d + 1 THEN
    RAISE EXCEPTION 'logistic fit: % features, % deviations, % anchor weights, % penalties, % columns', d,
      cardinality(p_stds), cardinality(p_anchor), cardinality(p_penalty), array_length(x, 2) USING ERRCODE = 'PR001';
  END IF;
  FOR i IN 1..n LOOP
    xi := ARRAY[1::double precision];
    FOR j IN 1..d LOOP
      xi := xi || (coalesce(x[i][j], p_means[j]) - p_means[j]) / p_stds[j];
    END LOOP;
    zx := zx || ARRAY[xi];
  END LOOP;
  pen := p_penalty;
  weights := p_anchor;
  loss := reflect._penalised_log_loss(zx, y, weights, p_anchor, pen);
  iterations := 0;
  LOOP
    iterations := iterations + 1;
    g := array_fill(0::double precision, ARRAY[d + 1]);
    h := array_fill(0::double precision, ARRAY[d + 1, d + 1]);
    FOR i IN 1..n LOOP
      z := 0;
      FOR j IN 1..d + 1 LOOP
        z := z + weights[j] * zx[i][j];
      END LOOP;
      p := reflect._sigmoid(z);
      wt := greatest(p * (1 - p), 1e-9);
      FOR j IN 1..d + 1 LOOP
        g[j] := g[j] + (y[i]::int - p) * zx[i][j];
        FOR k IN j..d + 1 LOOP
          h[j][k] := h[j][k] + wt * zx[i][j] * zx[i][k];
        END LOOP;
      END LOOP;
    END LOOP;
    FOR j IN 1..d + 1 LOOP
      FOR k IN 1..j - 1 LOOP
        h[j][k] := h[k][j];
      END LOOP;
      g[j] := g[j] - pen[j] * (weights[j] - p_anchor[j]);
      h[j][j] := h[j][j] + pen[j];
    END LOOP;
    delta := reflect._solve(h, g);
    step := 1;
    LOOP
      trial := ARRAY(SELECT weights[j] + step * delta[j] FROM generate_series(1, d + 1) j);
      trial_loss := reflect._penalised_log_loss(zx, y, trial, p_anchor, pen);
      EXIT WHEN trial_loss <= loss + 1e-12 OR step < 1e-6;
      step := step / 2;
    END LOOP;
    weights := trial;
    loss := trial_loss;
    EXIT WHEN iterations >= 50 OR step * (SELECT max(abs(v)) FROM unnest(delta) v) < 1e-8;
  END LOOP;
END
$$;

-- The same with one penalty for the features' weights and one for the intercept.
CREATE OR REPLACE FUNCTION reflect._fit_logistic_around(x double precision[], y boolean[],
                                                        p_means double precision[], p_stds double precision[],
                                                        p_anchor double precision[], p_l2 double precision,
                                                        p_l2_intercept double precision,
                                                        OUT weights double precision[], OUT iterations integer)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT f.weights, f.iterations
  FROM reflect._fit_logistic_around(x, y, p_means, p_stds, p_anchor,
                                    p_l2_intercept || array_fill(p_l2, ARRAY[cardinality(p_means)])) f
$$;

-- The anchored fit a version's own labels make (fit_calibrator_v1), with the level of each kind of question
-- (choice / number / short / long) as its own term: labels of one kind move that kind's confidence, not every
-- answer's. With the intercept as the free term, 50 labels of one dataset moved the confidence of the other
-- kinds' datasets too: their Brier score rose by +0.025 on average (12 packaged datasets, the shipped
-- calibrator; +0.0035 with these terms), and an evaluation's MMLU labels took GSM8K's confidence from 0.53 to
-- 0.34 (accuracy 0.46, bench/results/out-of-box.md; 0.41-0.49 with these terms, replayed). The cost: labels
-- drawn from traffic the installed calibrator already fits feed four free terms instead of one, so more noise
-- (Brier +0.015 against +0.005 after 50 such labels with the levels' penalty at 0.3; at 1, the setting since
-- migration 0018, +0.008: bench/results/kind-penalty.md). Where the traffic is new to it, mixed kinds, the two
-- fits are alike (ECE above floor +0.025 and +0.028 after 100 labels). Measured by bench/refit_kinds_bench.py
-- (bench/results/refit-kinds.md).
-- The fit adds the kinds as raw one-hot columns around 0 under p_l2_kind (a small penalty) and holds the
-- intercept with the features' p_l2, so a shift seen in one kind's labels alone reaches the others at
-- p_l2_kind / (p_l2 + p_l2_kind), 3% at the shipped settings (1 and 30); then folds the four levels back into
-- the intercept and the kind features' weights (the same scores on the calibrator's own features). Without the
-- three kind features among p_names it is the plain anchored fit (p_l2_kind on the intercept).
CREATE OR REPLACE FUNCTION reflect._fit_logistic_around_kinds(x double precision[], y boolean[], p_names text[],
                                                              p_means double precision[], p_stds double precision[],
                                                              p_anchor double precision[], p_l2 double precision,
                                                              p_l2_kind double precision,
                                                              OUT weights double precision[], OUT iterations integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  n integer := coalesce(cardinality(y), 0);
  d integer := cardinality(p_means);
  pos integer[] := ARRAY[array_position(p_names, 'kind_choice'), array_position(p_names, 'kind_number'),
                         array_position(p_names, 'kind_long')];
  xe double precision[] := '{}';
  raw double precision[];
  w double precision[];
  lvl double precision[];
BEGIN
  IF array_position(pos, NULL) IS NOT NULL OR cardinality(p_names) <> d THEN
    SELECT f.weights, f.iterations INTO weights, iterations
    FROM reflect._fit_logistic_around(x, y, p_means, p_stds, p_anchor, p_l2, p_l2_kind) f;
    RETURN;
  END IF;
  FOR i IN 1..n LOOP
    -- an answer without a recorded kind counts as the mix the calibrator's training mean says
    raw := ARRAY(SELECT coalesce(x[i][pos[k]], p_means[pos[k]]) FROM generate_series(1, 3) k);
    xe := xe || ARRAY[ARRAY(SELECT x[i][j] FROM generate_series(1, d) j) || raw || (1 - raw[1] - raw[2] - raw[3])];
  END LOOP;
  SELECT f.weights, f.iterations INTO w, iterations
  FROM reflect._fit_logistic_around(CASE WHEN n = 0 THEN NULL ELSE xe END, y,
                                    p_means || array_fill(0::double precision, ARRAY[4]),
                                    p_stds || array_fill(1::double precision, ARRAY[4]),
                                    p_anchor || array_fill(0::double precision, ARRAY[4]),
                                    ARRAY[p_l2] || array_fill(p_l2, ARRAY[d]) || array_fill(p_l2_kind, ARRAY[4])) f;
  -- levels of choice, number and long relative to short; short's level goes to the intercept
  lvl := ARRAY[w[d + 2] - w[d + 5], w[d + 3] - w[d + 5], w[d + 4] - w[d + 5]];
  weights := w[1:d + 1];
  weights[1] := weights[1] + w[d + 5]
                + lvl[1] * p_means[pos[1]] + lvl[2] * p_means[pos[2]] + lvl[3] * p_means[pos[3]];
  FOR k IN 1..3 LOOP
    weights[pos[k] + 1] := weights[pos[k] + 1] + lvl[k] * p_stds[pos[k]];
  END LOOP;
END
$$;

-- The log-loss of weights w on standardised rows zx (leading 1) plus the penalty towards p_anchor.
CREATE OR REPLACE FUNCTION reflect._penalised_log_loss(zx double precision[], y boolean[], w double precision[],
                                                       p_anchor double precision[], pen double precision[])
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce((SELECT sum(greatest(z, 0) + ln(1 + exp(-abs(z))) - CASE WHEN y[i] THEN z ELSE 0 END)
                   FROM (SELECT i, (SELECT sum(w[j] * zx[i][j]) FROM generate_series(1, cardinality(w)) j) AS z
                         FROM generate_series(1, coalesce(cardinality(y), 0)) i) r), 0)
         + 0.5 * (SELECT sum(pen[j] * (w[j] - p_anchor[j]) ^ 2) FROM generate_series(1, cardinality(w)) j)
$$;

-- The probability of a fitted logistic model for one feature vector (a missing feature takes its mean).
CREATE OR REPLACE FUNCTION reflect._logistic(x double precision[], p_means double precision[],
                                             p_stds double precision[], p_weights double precision[])
RETURNS double precision
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT reflect._sigmoid(p_weights[1] + coalesce(sum(p_weights[j + 1] * (coalesce(x[j], p_means[j]) - p_means[j]) / p_stds[j]), 0))
  FROM generate_series(1, cardinality(p_means)) j
$$;

-- The same for every row of a feature matrix.
CREATE OR REPLACE FUNCTION reflect._logistic_rows(x double precision[], p_means double precision[],
                                                  p_stds double precision[], p_weights double precision[])
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT array_agg(reflect._sigmoid(p_weights[1] + coalesce(
           (SELECT sum(p_weights[j + 1] * (coalesce(x[i][j], p_means[j]) - p_means[j]) / p_stds[j])
            FROM generate_series(1, cardinality(p_means)) j), 0)) ORDER BY i)
  FROM generate_series(1, coalesce(array_length(x, 1), 0)) i
$$;

-- The metrics every calibrator fit reports, on probabilities it was not fitted on.
CREATE OR REPLACE FUNCTION reflect._calibration_metrics(p_conf double precision[], p_y boolean[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT jsonb_build_object(
    'n', coalesce(cardinality(p_y), 0),
    'accuracy', (SELECT avg(y::int) FROM unnest(p_y) y),
    'mean_confidence', (SELECT avg(c) FROM unnest(p_conf) c),
    'ece', reflect.ece_v1(p_conf, p_y),
    'brier', reflect.brier_v1(p_conf, p_y),
    'auroc_wrong', reflect.auroc_v1((SELECT array_agg(1 - c) FROM unnest(p_conf) c), (SELECT array_agg(NOT y) FROM unnest(p_y) y)),
    'accuracy_at_80', reflect.accuracy_at_coverage_v1(p_conf, p_y, 0.8))
$$;

-- Fits a calibrator for one model version on its labelled answers (calibration_features_v2, _fit_logistic).
-- Labelled answers are split by a hash of the request id: 80% train, 20% held out (an answer stays on its
-- side as labels accumulate); the held-out metrics are stored with the fit. A refit never makes held-out
-- calibration worse: the active calibrator is scored on the same held-out answers (with its own features),
-- and when its Brier score is lower the new fit is stored inactive, with both numbers and the reason.
-- When the version has an installed calibrator (the one pgreflect ships for its default model) whose features
-- the database still computes, with the probe in both or neither, the fit is anchored on it, on its features
-- (the shipped one leaves out signals that did not hold across datasets; _fit_logistic_around_kinds: a level
-- per kind of question, calibration_anchor_* settings), and needs fewer labels: the user's labels correct it
-- where their traffic differs instead of replacing it with a fit on a few dozen answers
-- (bench/results/calibration-few-labels.md measures both). Always the installed one, not the last refit: a
-- refit's labels are all counted again in the next one.
-- Returns the new calibrator's id, or NULL when there are not enough labels.
CREATE OR REPLACE FUNCTION reflect.fit_calibrator_v1(p_model_version text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_mv integer;
  v_names text[] := reflect.calibration_features_v2();
  tv jsonb[];
  ty boolean[];
  hv jsonb[];
  hy boolean[];
  tx double precision[];
  hx double precision[];
  v_labels integer;
  f record;
  old reflect.calibrators;
  anchor reflect.calibrators;
  v_prefix text := 'calibration_';
  v_new jsonb;
  v_old jsonb;
  v_keep boolean := false;
  v_id integer;
BEGIN
  SELECT id INTO v_mv FROM reflect.model_versions WHERE name = p_model_version;
  IF v_mv IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  -- The hidden-state probe's signal is a feature once the version has an active probe (pgreflect.meta.probe).
  IF EXISTS (SELECT FROM reflect.state_probes WHERE model_version_id = v_mv AND is_active) THEN
    v_names := v_names || 'probe'::text;
  END IF;

  SELECT count(*),
         array_agg(reflect._feature_values_of(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(reflect._feature_values_of(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0)
  INTO v_labels, tv, ty, hv, hy
  FROM reflect.labels l JOIN reflect.answers a ON a.request_id = l.request_id
  WHERE a.model_version_id = v_mv;

  SELECT * INTO anchor FROM reflect.calibrators
  WHERE model_version_id = v_mv AND heldout_metrics ->> 'source' = 'installed' AND features <@ v_names
    AND ('probe' = ANY (features)) = ('probe' = ANY (v_names))
  ORDER BY id DESC LIMIT 1;
  IF anchor.id IS NOT NULL THEN
    v_prefix := 'calibration_anchor_';
    v_names := anchor.features;
  END IF;
  IF v_labels < reflect._setting_int(v_prefix || 'min_labels') OR ty IS NULL
     OR (SELECT count(*) FILTER (WHERE y) FROM unnest(ty) y) < reflect._setting_int(v_prefix || 'min_per_class')
     OR (SELECT count(*) FILTER (WHERE NOT y) FROM unnest(ty) y) < reflect._setting_int(v_prefix || 'min_per_class') THEN
    RAISE NOTICE 'model version %: % labels, not enough to fit a calibrator', p_model_version, v_labels;
    RETURN NULL;
  END IF;

  tx := reflect._matrix(tv, v_names);
  hx := reflect._matrix(hv, v_names);
  IF anchor.id IS NULL THEN
    f := reflect._fit_logistic(tx, ty, reflect._setting_float('calibration_l2'));
  ELSE
    SELECT anchor.feature_means AS means, anchor.feature_stds AS stds, a.weights, a.iterations INTO f
    FROM reflect._fit_logistic_around_kinds(tx, ty, v_names, anchor.feature_means, anchor.feature_stds,
                                            anchor.weights, reflect._setting_float('calibration_anchor_l2'),
                                            reflect._setting_float('calibration_anchor_intercept_l2')) a;
  END IF;
  v_new := reflect._calibration_metrics(reflect._logistic_rows(hx, f.means, f.stds, f.weights), hy);
  SELECT * INTO old FROM reflect.calibrators WHERE model_version_id = v_mv AND is_active;
  IF old.id IS NOT NULL AND hy IS NOT NULL THEN
    v_old := reflect._calibration_metrics(
      reflect._logistic_rows(reflect._matrix(hv, old.features), old.feature_means, old.feature_stds, old.weights), hy);
    v_keep := (v_old ->> 'brier')::double precision < (v_new ->> 'brier')::double precision;
  END IF;
  IF NOT v_keep THEN
    UPDATE reflect.calibrators SET is_active = false WHERE model_version_id = v_mv AND is_active;
  END IF;
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (v_mv, 'logistic_l2', v_names, f.means, f.stds, f.weights, cardinality(ty),
          coalesce(cardinality(hy), 0),
          jsonb_build_object(
            'iterations', f.iterations, 'anchored_on', anchor.id,
            -- the kinds of question its labels asked: an anchored refit moves those (_fit_logistic_around_kinds)
            'train_labels_by_kind', reflect._labels_by_kind(tv),
            'heldout', v_new,
            'train', reflect._calibration_metrics(reflect._logistic_rows(tx, f.means, f.stds, f.weights), ty)
                     - 'accuracy_at_80' - 'mean_confidence')
          || CASE WHEN old.id IS NULL OR hy IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
               'replaced', jsonb_build_object('calibrator_id', old.id, 'heldout', v_old, 'kept', v_keep,
                 'reason', CASE WHEN v_keep
                   THEN format('not activated: held-out Brier %s is worse than the active calibrator''s %s on the same %s answers',
                               round((v_new ->> 'brier')::numeric, 4), round((v_old ->> 'brier')::numeric, 4), cardinality(hy))
                   ELSE format('activated: held-out Brier %s against the replaced calibrator''s %s on the same %s answers',
                               round((v_new ->> 'brier')::numeric, 4), round((v_old ->> 'brier')::numeric, 4), cardinality(hy))
                   END)) END,
          v_labels, NOT v_keep)
  RETURNING id INTO v_id;
  IF v_keep THEN
    RAISE NOTICE 'model version %: refit % kept inactive, the active calibrator % calibrates the held-out answers better',
      p_model_version, v_id, old.id;
  END IF;
  RETURN v_id;
END
$$;

-- How many of these answers (their feature values) asked each kind of question; "unknown": no kind recorded.
CREATE OR REPLACE FUNCTION reflect._labels_by_kind(p_values jsonb[])
RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(jsonb_object_agg(kind, n), '{}')
  FROM (SELECT CASE WHEN (v ->> 'kind_choice')::float8 = 1 THEN 'choice'
                    WHEN (v ->> 'kind_number')::float8 = 1 THEN 'number'
                    WHEN (v ->> 'kind_long')::float8 = 1 THEN 'long'
                    WHEN v ->> 'kind_choice' IS NULL AND v ->> 'kind_number' IS NULL AND v ->> 'kind_long' IS NULL
                      THEN 'unknown'
                    ELSE 'short' END AS kind, count(*) AS n
        FROM unnest(p_values) v GROUP BY 1) k
$$;

-- Rows of named feature values as a matrix in the order of p_names.
CREATE OR REPLACE FUNCTION reflect._matrix(p_values jsonb[], p_names text[])
RETURNS double precision[]
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT coalesce(array_agg(reflect._vector(v, p_names) ORDER BY i), '{}')
  FROM unnest(p_values) WITH ORDINALITY AS t(v, i)
$$;

-- Run by pg_cron every 5 minutes: fits a first calibrator once a version has enough labels, and refits
-- when calibration_refit_new_labels more labels arrived since the active one was fitted.
CREATE OR REPLACE FUNCTION reflect.refit_calibrators_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v record;
  v_n integer := 0;
BEGIN
  FOR v IN
    -- labels_seen of the latest fit, active or not: a refit kept inactive (worse) waits for new labels too
    SELECT mv.name, count(l.request_id) AS labels,
           (SELECT max(c.labels_seen) FROM reflect.calibrators c WHERE c.model_version_id = mv.id) AS labels_seen
    FROM reflect.model_versions mv
    JOIN reflect.answers a ON a.model_version_id = mv.id
    JOIN reflect.labels l ON l.request_id = a.request_id
    GROUP BY mv.id, mv.name
  LOOP
    IF (v.labels_seen IS NULL AND v.labels >= reflect._setting_int('calibration_min_labels'))
       OR v.labels - v.labels_seen >= reflect._setting_int('calibration_refit_new_labels') THEN
      IF reflect.fit_calibrator_v1(v.name) IS NOT NULL THEN
        v_n := v_n + 1;
      END IF;
    END IF;
  END LOOP;
  RETURN v_n;
END
$$;

-- A calibrator as a portable document (what pgreflect ships for its default model, and what a user can move
-- between installs): the fit and its report, tied to the exact GGUF bytes it was fitted on.
CREATE OR REPLACE FUNCTION reflect.export_calibrator_v1(p_model_version text)
RETURNS jsonb
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT jsonb_build_object(
    'format', 'pgreflect-calibrator-1', 'model_version', mv.name, 'gguf_sha256', coalesce(b.sha256, mv.sha256),
    'adapter_sha256', mv.adapter_sha256, 'method', c.method, 'features', to_jsonb(c.features),
    'feature_means', to_jsonb(c.feature_means), 'feature_stds', to_jsonb(c.feature_stds),
    'weights', to_jsonb(c.weights), 'n_train', c.n_train, 'n_heldout', c.n_heldout,
    'heldout_metrics', c.heldout_metrics, 'fitted_at', c.created_at)
  FROM reflect.model_versions mv
  JOIN reflect.calibrators c ON c.model_version_id = mv.id AND c.is_active
  LEFT JOIN reflect.model_versions b ON b.id = mv.base_model_version_id
  WHERE mv.name = p_model_version
$$;

-- Installs a calibrator document for a model version whose bytes it was fitted on (same GGUF sha256, same
-- adapter): active when the version has no active calibrator, otherwise kept beside it (the version's own
-- refits compare themselves with the active one). The same document installed twice is one row. Returns
-- the calibrator's id.
CREATE OR REPLACE FUNCTION reflect.install_calibrator_v1(p_model_version text, p_doc jsonb)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  mv reflect.model_versions;
  v_sha text;
  v_features text[];
  v_known text[] := ARRAY(SELECT jsonb_object_keys(reflect._feature_values(0, 0, 0, '{}')))
                    || reflect.optional_features_v1();
  v_digest text := encode(sha256(convert_to(p_doc::text, 'UTF8')), 'hex');
  v_id integer;
BEGIN
  SELECT * INTO mv FROM reflect.model_versions WHERE name = p_model_version;
  IF mv.id IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;
  IF p_doc ->> 'format' IS DISTINCT FROM 'pgreflect-calibrator-1' OR p_doc ->> 'method' IS DISTINCT FROM 'logistic_l2'
     OR jsonb_typeof(p_doc -> 'features') <> 'array' THEN
    RAISE EXCEPTION 'not a pgreflect calibrator document (format pgreflect-calibrator-1, method logistic_l2)'
      USING ERRCODE = 'PR001';
  END IF;
  SELECT coalesce(b.sha256, mv.sha256) INTO v_sha FROM reflect.model_versions b WHERE b.id = mv.base_model_version_id;
  v_sha := coalesce(v_sha, mv.sha256);
  IF p_doc ->> 'gguf_sha256' IS DISTINCT FROM v_sha OR p_doc ->> 'adapter_sha256' IS DISTINCT FROM mv.adapter_sha256 THEN
    RAISE EXCEPTION 'this calibrator was fitted on other model bytes (GGUF %, adapter %) than version "%" (GGUF %, adapter %)',
      p_doc ->> 'gguf_sha256', coalesce(p_doc ->> 'adapter_sha256', 'none'), p_model_version, v_sha,
      coalesce(mv.adapter_sha256, 'none') USING ERRCODE = 'PR001';
  END IF;
  v_features := ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'features'));
  IF NOT v_features <@ v_known THEN
    RAISE EXCEPTION 'unknown calibrator features: %', ARRAY(SELECT unnest(v_features) EXCEPT SELECT unnest(v_known))
      USING ERRCODE = 'PR001';
  END IF;
  SELECT id INTO v_id FROM reflect.calibrators
  WHERE model_version_id = mv.id AND heldout_metrics ->> 'document_sha256' = v_digest;
  IF v_id IS NOT NULL THEN
    RETURN v_id;
  END IF;
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (mv.id, 'logistic_l2', v_features,
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'feature_means')::double precision),
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'feature_stds')::double precision),
          ARRAY(SELECT jsonb_array_elements_text(p_doc -> 'weights')::double precision),
          (p_doc ->> 'n_train')::integer, (p_doc ->> 'n_heldout')::integer,
          coalesce(p_doc -> 'heldout_metrics', '{}') || jsonb_build_object('source', 'installed',
            'document_sha256', v_digest, 'fitted_at', p_doc -> 'fitted_at', 'fit', p_doc -> 'fit'),
          0, NOT EXISTS (SELECT FROM reflect.calibrators WHERE model_version_id = mv.id AND is_active))
  RETURNING id INTO v_id;
  RETURN v_id;
EXCEPTION WHEN check_violation OR invalid_text_representation THEN
  RAISE EXCEPTION 'malformed calibrator document: %', SQLERRM USING ERRCODE = 'PR001';
END
$$;
