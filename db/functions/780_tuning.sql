SET LOCAL ROLE reflect_owner;

-- Self-tuning: knobs that need no training, chosen from labels, recorded and reversible (docs/improve.md).
-- Today: the confidence threshold per model version (below it the request's low-confidence action applies).

-- The value a tuned knob has for a version now: its newest change that was not reverted (NULL: the global
-- setting applies).
CREATE OR REPLACE FUNCTION reflect._tuned(p_model_version_id integer, p_knob text)
RETURNS double precision
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT new_value FROM reflect.tuning_changes
  WHERE model_version_id = p_model_version_id AND knob = p_knob AND reverted_at IS NULL
  ORDER BY id DESC LIMIT 1
$$;

-- Chooses the lowest confidence threshold at which the answers it lets through reach p_target accuracy,
-- from the version's labelled answers: fitted on the older 70% (by request id), checked on the newer 30%,
-- whose coverage and accuracy at that threshold are what the change is expected to do. Records the change
-- (with the labels that chose it) when it moves the threshold by 0.01 or more; returns the threshold in force.
-- Refuses (PR001) with fewer than tuning_min_labels labels or when no threshold reaches the target on the fit
-- part with at least 10 answers let through.
CREATE OR REPLACE FUNCTION reflect.tune_confidence_threshold_v1(p_model_version text,
                                                                p_target_accuracy double precision DEFAULT NULL)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_model integer;
  v_target double precision := coalesce(p_target_accuracy, reflect._setting_float('tuning_target_accuracy'));
  v_min integer := reflect._setting_int('tuning_min_labels');
  v_n integer;
  v_cut bigint;
  v_t double precision;
  v_fit record;
  v_check record;
  v_current double precision;
BEGIN
  SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version FOR UPDATE;
  IF v_model IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', left(p_model_version, 100) USING ERRCODE = 'PR003';
  END IF;
  IF v_target IS NULL OR v_target <= 0 OR v_target >= 1 THEN
    RAISE EXCEPTION 'target accuracy must be between 0 and 1' USING ERRCODE = 'PR001';
  END IF;
  DROP TABLE IF EXISTS pg_temp._tune;
  CREATE TEMP TABLE _tune ON COMMIT DROP AS
  SELECT r.id AS request_id, a.confidence::double precision AS confidence, l.is_correct
  FROM reflect.labels l
  JOIN reflect.requests r ON r.id = l.request_id
  JOIN reflect.answers a ON a.request_id = r.id
  WHERE r.model_version_id = v_model AND a.confidence IS NOT NULL;
  SELECT count(*) INTO v_n FROM _tune;
  IF v_n < v_min THEN
    RAISE EXCEPTION 'version % has % labelled answers; tuning needs %', p_model_version, v_n, v_min
      USING ERRCODE = 'PR001', HINT = 'the tuning_min_labels setting';
  END IF;
  SELECT request_id INTO v_cut FROM _tune ORDER BY request_id OFFSET (v_n * 7 / 10) LIMIT 1;

  SELECT t.confidence AS threshold, t.covered, t.accuracy INTO v_fit
  FROM (
    SELECT confidence, count(*) OVER w AS covered, avg(is_correct::int) OVER w AS accuracy
    FROM _tune WHERE request_id < v_cut
    WINDOW w AS (ORDER BY confidence DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ) t
  WHERE t.covered >= 10 AND t.accuracy >= v_target
  ORDER BY t.confidence ASC LIMIT 1;
  IF v_fit.threshold IS NULL THEN
    RAISE EXCEPTION 'no confidence threshold reaches % accuracy on the labelled answers of %', v_target,
      p_model_version USING ERRCODE = 'PR001', HINT = 'lower the target (tuning_target_accuracy) or label more answers';
  END IF;
  v_t := round(v_fit.threshold::numeric, 4);
  SELECT count(*) AS n, avg((confidence >= v_t)::int) AS coverage,
         avg(is_correct::int) FILTER (WHERE confidence >= v_t) AS accuracy, avg(is_correct::int) AS accuracy_all
  INTO v_check FROM _tune WHERE request_id >= v_cut;

  v_current := coalesce(reflect._tuned(v_model, 'confidence_threshold'),
                        reflect._setting_float('confidence_threshold_default'));
  IF abs(v_t - v_current) < 0.01 THEN
    RETURN v_current;
  END IF;
  INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
  VALUES (v_model, 'confidence_threshold', v_current, v_t,
          format('lowest threshold reaching %s accuracy on %s labelled answers; on the %s newer ones it lets %s%% through at %s accuracy (all: %s)',
                 v_target, v_n - v_check.n, v_check.n, round(100 * v_check.coverage::numeric),
                 coalesce(round(v_check.accuracy::numeric, 3)::text, 'n/a'), round(v_check.accuracy_all::numeric, 3)),
          jsonb_build_object('labels', v_n, 'fit_labels', v_n - v_check.n, 'check_labels', v_check.n,
                             'label_request_ids', jsonb_build_array((SELECT min(request_id) FROM _tune),
                                                                    (SELECT max(request_id) FROM _tune)),
                             'target_accuracy', v_target, 'fit_coverage', v_fit.covered::float8 / (v_n - v_check.n),
                             'fit_accuracy', v_fit.accuracy, 'expected_coverage', v_check.coverage,
                             'expected_accuracy', v_check.accuracy, 'accuracy_without_threshold', v_check.accuracy_all),
          session_user);
  RETURN v_t;
END
$$;

CREATE OR REPLACE FUNCTION reflect.revert_tuning_v1(p_change_id bigint)
RETURNS double precision
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  c reflect.tuning_changes;
BEGIN
  UPDATE reflect.tuning_changes SET reverted_at = clock_timestamp(), reverted_by = session_user
  WHERE id = p_change_id AND reverted_at IS NULL
  RETURNING * INTO c;
  IF c.id IS NULL THEN
    RAISE EXCEPTION 'no tuning change % in force', p_change_id USING ERRCODE = 'PR003';
  END IF;
  RETURN coalesce(reflect._tuned(c.model_version_id, c.knob), reflect._setting_float('confidence_threshold_default'));
END
$$;

-- The scheduled tuning (pg_cron pgreflect-tune-thresholds, hourly): every version with tuning_min_labels
-- labels and at least as many new labels since its last change is tuned; a version that cannot reach the
-- target keeps its threshold (NOTICE). Returns the number of changes recorded.
CREATE OR REPLACE FUNCTION reflect.tune_when_ready_v1()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v record;
  v_before bigint := (SELECT count(*) FROM reflect.tuning_changes);
BEGIN
  FOR v IN
    SELECT mv.name
    FROM reflect.model_versions mv
    WHERE (SELECT count(*) FROM reflect.labels l JOIN reflect.requests r ON r.id = l.request_id
           WHERE r.model_version_id = mv.id
             AND l.created_at > coalesce((SELECT max(decided_at) FROM reflect.tuning_changes t
                                          WHERE t.model_version_id = mv.id), '-infinity'))
          >= reflect._setting_int('tuning_min_labels')
  LOOP
    BEGIN
      PERFORM reflect.tune_confidence_threshold_v1(v.name);
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'threshold of % not tuned: %', v.name, SQLERRM;
    END;
  END LOOP;
  RETURN (SELECT count(*) FROM reflect.tuning_changes) - v_before;
END
$$;

-- For analysts: every tuning change with the labels that chose it and what it was expected to do.
CREATE OR REPLACE VIEW reflect.tuning_history AS
SELECT t.id, mv.name AS model_version, t.knob, t.old_value, t.new_value, t.reason, t.evidence, t.decided_by,
       t.decided_at, t.reverted_at, t.reverted_by,
       t.reverted_at IS NULL AND t.id = (SELECT max(t2.id) FROM reflect.tuning_changes t2
                                         WHERE t2.model_version_id = t.model_version_id AND t2.knob = t.knob
                                           AND t2.reverted_at IS NULL) AS in_force
FROM reflect.tuning_changes t
JOIN reflect.model_versions mv ON mv.id = t.model_version_id;
