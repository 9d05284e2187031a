SET LOCAL ROLE reflect_owner;

-- Fits a calibrator for one model version: logistic regression with an L2 penalty on standardised
-- features (calibration_features_v1), by Newton-Raphson. Why logistic regression: it maps several
-- signals to a probability at once, and with the few hundred labels a local model gets it overfits
-- less than isotonic regression, which is one-dimensional and needs many labels per bin.
-- Labelled answers are split by a hash of the request id: 80% train, 20% held out; the held-out metrics
-- are stored with the fit. Returns the new calibrator's id, or NULL when there are not enough labels.
CREATE OR REPLACE FUNCTION reflect.fit_calibrator_v1(p_model_version text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_mv integer;
  v_feats text[] := reflect.calibration_features_v1();
  d integer := cardinality(reflect.calibration_features_v1());
  tx double precision[];
  ty boolean[];
  hx double precision[];
  hy boolean[];
  n integer;
  v_labels integer;
  m double precision[];
  s double precision[];
  w double precision[];
  g double precision[];
  h double precision[];
  xi double precision[];
  delta double precision[];
  z double precision;
  p double precision;
  wt double precision;
  v_l2 double precision := reflect._setting_float('calibration_l2');
  hconf double precision[];
  tconf double precision[];
  v_metrics jsonb;
  v_id integer;
  v_iter integer := 0;
BEGIN
  SELECT id INTO v_mv FROM reflect.model_versions WHERE name = p_model_version;
  IF v_mv IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', p_model_version USING ERRCODE = 'PR003';
  END IF;

  SELECT count(*),
         array_agg(reflect._feature_vector(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 <> 0),
         array_agg(reflect._feature_vector(l.request_id) ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0),
         array_agg(l.is_correct ORDER BY l.request_id) FILTER (WHERE abs(hashtext(l.request_id::text)) % 5 = 0)
  INTO v_labels, tx, ty, hx, hy
  FROM reflect.labels l JOIN reflect.answers a ON a.request_id = l.request_id
  WHERE a.model_version_id = v_mv;

  n := coalesce(cardinality(ty), 0);
  IF v_labels < reflect._setting_int('calibration_min_labels')
     OR (SELECT count(*) FILTER (WHERE y) FROM unnest(ty) y) < reflect._setting_int('calibration_min_per_class')
     OR (SELECT count(*) FILTER (WHERE NOT y) FROM unnest(ty) y) < reflect._setting_int('calibration_min_per_class') THEN
    RAISE NOTICE 'model version %: % labels, not enough to fit a calibrator', p_model_version, v_labels;
    RETURN NULL;
  END IF;

  -- standardise with the training means and standard deviations
  SELECT array_agg(coalesce(mean, 0) ORDER BY j), array_agg(sd ORDER BY j) INTO m, s
  FROM (SELECT j, avg(tx[i][j]) AS mean, coalesce(nullif(stddev_pop(tx[i][j]), 0), 1) AS sd
        FROM generate_series(1, d) j, generate_series(1, n) i GROUP BY j) st;
  -- missing follow-up signals take the training mean (see _feature_vector)
  FOR i IN 1..n LOOP
    FOR j IN 1..d LOOP
      IF tx[i][j] IS NULL THEN tx[i][j] := m[j]; END IF;
    END LOOP;
  END LOOP;
  FOR i IN 1..coalesce(cardinality(hy), 0) LOOP
    FOR j IN 1..d LOOP
      IF hx[i][j] IS NULL THEN hx[i][j] := m[j]; END IF;
    END LOOP;
  END LOOP;

  w := array_fill(0::double precision, ARRAY[d + 1]);
  LOOP
    v_iter := v_iter + 1;
    g := array_fill(0::double precision, ARRAY[d + 1]);
    h := array_fill(0::double precision, ARRAY[d + 1, d + 1]);
    FOR i IN 1..n LOOP
      xi := ARRAY[1::double precision];
      FOR j IN 1..d LOOP
        xi := xi || (tx[i][j] - m[j]) / s[j];
      END LOOP;
      z := 0;
      FOR j IN 1..d + 1 LOOP
        z := z + w[j] * xi[j];
      END LOOP;
      p := reflect._sigmoid(z);
      wt := greatest(p * (1 - p), 1e-9);
      FOR j IN 1..d + 1 LOOP
        g[j] := g[j] + (ty[i]::int - p) * xi[j];
        FOR k IN j..d + 1 LOOP
          h[j][k] := h[j][k] + wt * xi[j] * xi[k];
        END LOOP;
      END LOOP;
    END LOOP;
    FOR j IN 1..d + 1 LOOP
      FOR k IN 1..j - 1 LOOP
        h[j][k] := h[k][j];
      END LOOP;
      IF j > 1 THEN  -- no penalty on the intercept
        g[j] := g[j] - v_l2 * w[j];
        h[j][j] := h[j][j] + v_l2;
      END IF;
    END LOOP;
    delta := reflect._solve(h, g);
    FOR j IN 1..d + 1 LOOP
      w[j] := w[j] + delta[j];
    END LOOP;
    EXIT WHEN v_iter >= 50 OR (SELECT max(abs(x)) FROM unnest(delta) x) < 1e-8;
  END LOOP;

  SELECT array_agg(reflect._sigmoid(w[1] + (SELECT sum(w[j + 1] * (hx[i][j] - m[j]) / s[j]) FROM generate_series(1, d) j))
                   ORDER BY i)
  INTO hconf FROM generate_series(1, coalesce(cardinality(hy), 0)) i;
  SELECT array_agg(reflect._sigmoid(w[1] + (SELECT sum(w[j + 1] * (tx[i][j] - m[j]) / s[j]) FROM generate_series(1, d) j))
                   ORDER BY i)
  INTO tconf FROM generate_series(1, n) i;

  v_metrics := jsonb_build_object(
    'iterations', v_iter,
    'heldout', jsonb_build_object(
      'n', coalesce(cardinality(hy), 0),
      'accuracy', (SELECT avg(y::int) FROM unnest(hy) y),
      'mean_confidence', (SELECT avg(c) FROM unnest(hconf) c),
      'ece', reflect.ece_v1(hconf, hy),
      'brier', reflect.brier_v1(hconf, hy),
      'auroc_wrong', reflect.auroc_v1((SELECT array_agg(1 - c) FROM unnest(hconf) c), (SELECT array_agg(NOT y) FROM unnest(hy) y)),
      'accuracy_at_80', reflect.accuracy_at_coverage_v1(hconf, hy, 0.8)),
    'train', jsonb_build_object(
      'n', n,
      'accuracy', (SELECT avg(y::int) FROM unnest(ty) y),
      'ece', reflect.ece_v1(tconf, ty),
      'brier', reflect.brier_v1(tconf, ty),
      'auroc_wrong', reflect.auroc_v1((SELECT array_agg(1 - c) FROM unnest(tconf) c), (SELECT array_agg(NOT y) FROM unnest(ty) y))));

  UPDATE reflect.calibrators SET is_active = false WHERE model_version_id = v_mv AND is_active;
  INSERT INTO reflect.calibrators (model_version_id, method, features, feature_means, feature_stds, weights, n_train,
                                   n_heldout, heldout_metrics, labels_seen, is_active)
  VALUES (v_mv, 'logistic_l2', v_feats, m, s, w, n, coalesce(cardinality(hy), 0), v_metrics, v_labels, true)
  RETURNING id INTO v_id;
  RETURN v_id;
END
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
    SELECT mv.name, count(l.request_id) AS labels, c.labels_seen
    FROM reflect.model_versions mv
    JOIN reflect.answers a ON a.model_version_id = mv.id
    JOIN reflect.labels l ON l.request_id = a.request_id
    LEFT JOIN reflect.calibrators c ON c.model_version_id = mv.id AND c.is_active
    GROUP BY mv.name, c.labels_seen
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
