SET LOCAL ROLE reflect_owner;

-- Self-tuning: knobs that need no training, chosen from labels, recorded and reversible (docs/improve.md):
-- per model version, the confidence threshold (below it the request's low-confidence action applies) and
-- memory retrieval's cutoff and k.

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

-- The global setting a knob falls back to when no change is in force.
CREATE OR REPLACE FUNCTION reflect._knob_default(p_knob text)
RETURNS double precision
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT CASE p_knob WHEN 'confidence_threshold' THEN reflect._setting_float('confidence_threshold_default')
                     WHEN 'memory_max_distance' THEN reflect._setting_float('memory_max_distance')
                     WHEN 'memory_k' THEN reflect._setting_float('memory_k_default') END
$$;

-- Chooses memory retrieval's cutoff c and k for a version from its labelled explored answers (submit_v1 draws
-- a random policy for memory_explore_share of the requests that leave memory to pgreflect: no memory, or
-- k = 1..memory_k_max memories within memory_explore_max_distance; recall_v1 records the nearest memory's
-- distance d). Only answers with a memory within memory_explore_max_distance count: beyond it every policy
-- gives none. Because the draw was random, the accuracy of a policy can be estimated without bias from the
-- answers whose drawn policy did what it would have done, each weighted by 1 / the chance of its draw
-- (inverse propensity: none 1/(K+1), some memory K/(K+1)):
--   cutoff  c in 0, 0.05, .., memory_explore_max_distance: "memory iff d <= c", valued on the answers with
--           (d <= c and a memory used) or (d > c and none used);
--   k       then, on the answers with d <= c that used memories, the accuracy of each drawn k.
-- Fitted on the older 70% (by request id; ties go to the smaller k, then the smaller cutoff: fewer prefilled
-- tokens), checked on the newer 30% against the policy in force. Records a change per knob that moves (with
-- the labels that chose it and what it is expected to do) unless the check part says the new cutoff is
-- worse; returns {max_distance, k, changed, evidence}. Refuses (PR001) with fewer than
-- memory_tuning_min_labels labelled explored answers.
CREATE OR REPLACE FUNCTION reflect.tune_memory_v1(p_model_version text)
RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  v_model integer;
  v_reach double precision := reflect._setting_float('memory_explore_max_distance');
  v_kmax integer := reflect._setting_int('memory_k_max');
  v_n integer;
  v_cut bigint;
  v_c0 double precision;
  v_k0 integer;
  v_new record;
  v_old record;
  v_k record;
  v_k_new integer;
  v_evidence jsonb;
  v_changed boolean := false;
  v_reason text;
BEGIN
  SELECT id INTO v_model FROM reflect.model_versions WHERE name = p_model_version FOR UPDATE;
  IF v_model IS NULL THEN
    RAISE EXCEPTION 'unknown model version "%"', left(p_model_version, 100) USING ERRCODE = 'PR003';
  END IF;
  DROP TABLE IF EXISTS pg_temp._explored;
  CREATE TEMP TABLE _explored ON COMMIT DROP AS
  SELECT r.id AS request_id, ml.nearest_distance AS d, ml.k AS drawn_k, ml.used, l.is_correct::int AS y,
         CASE WHEN ml.used > 0 THEN (v_kmax + 1)::float8 / v_kmax ELSE v_kmax + 1 END AS w
  FROM reflect.labels l
  JOIN reflect.requests r ON r.id = l.request_id
  JOIN reflect.memory_lookups ml ON ml.request_id = r.id
  WHERE r.model_version_id = v_model AND ml.explored AND ml.nearest_distance <= v_reach;
  SELECT count(*) INTO v_n FROM _explored;
  IF v_n < reflect._setting_int('memory_tuning_min_labels') THEN
    RAISE EXCEPTION 'version % has % labelled explored answers with a memory in reach; tuning memory needs %',
      p_model_version, v_n, reflect._setting_int('memory_tuning_min_labels')
      USING ERRCODE = 'PR001', HINT = 'the memory_tuning_min_labels and memory_explore_share settings';
  END IF;
  SELECT request_id INTO v_cut FROM _explored ORDER BY request_id OFFSET (v_n * 7 / 10) LIMIT 1;
  v_c0 := round(coalesce(reflect._tuned(v_model, 'memory_max_distance'),
                         reflect._setting_float('memory_max_distance'))::numeric, 4)::float8;
  v_k0 := round(coalesce(reflect._tuned(v_model, 'memory_k'), reflect._setting_float('memory_k_default')))::integer;

  DROP TABLE IF EXISTS pg_temp._cutoffs;
  CREATE TEMP TABLE _cutoffs ON COMMIT DROP AS
  SELECT p.c,
         count(*) FILTER (WHERE e.request_id < v_cut) AS n_fit,
         sum(e.w * e.y) FILTER (WHERE e.request_id < v_cut) / sum(e.w) FILTER (WHERE e.request_id < v_cut) AS v_fit,
         count(*) FILTER (WHERE e.request_id >= v_cut) AS n_check,
         sum(e.w * e.y) FILTER (WHERE e.request_id >= v_cut) / sum(e.w) FILTER (WHERE e.request_id >= v_cut) AS v_check
  FROM (SELECT round((g * 0.05)::numeric, 4)::float8 AS c FROM generate_series(0, floor(v_reach / 0.05 + 1e-9)::int) g
        UNION SELECT v_c0) p
  JOIN _explored e ON (e.d <= p.c AND e.used > 0) OR (e.d > p.c AND e.used = 0)
  GROUP BY p.c;
  SELECT * INTO v_new FROM _cutoffs WHERE n_fit >= 10 ORDER BY v_fit DESC, c LIMIT 1;
  SELECT * INTO v_old FROM _cutoffs WHERE c = v_c0;
  IF v_new.c IS NULL THEN
    RAISE EXCEPTION 'no memory cutoff has 10 matching labelled answers among the older % of version %',
      v_n * 7 / 10, p_model_version USING ERRCODE = 'PR001';
  END IF;
  -- k: the most accurate drawn k on the older answers within the chosen cutoff that used memories
  SELECT drawn_k AS k, count(*) AS n, avg(y) AS accuracy INTO v_k
  FROM _explored WHERE request_id < v_cut AND d <= v_new.c AND used > 0
  GROUP BY drawn_k HAVING count(*) >= 10 ORDER BY avg(y) DESC, drawn_k LIMIT 1;
  v_k_new := coalesce(v_k.k, v_k0);

  v_evidence := jsonb_build_object(
    'labels', v_n, 'fit_labels', (SELECT count(*) FROM _explored WHERE request_id < v_cut),
    'check_labels', (SELECT count(*) FROM _explored WHERE request_id >= v_cut),
    'label_request_ids', jsonb_build_array((SELECT min(request_id) FROM _explored), (SELECT max(request_id) FROM _explored)),
    'reach', v_reach,
    'chosen', jsonb_build_object('max_distance', v_new.c, 'k', v_k_new, 'fit_accuracy', v_new.v_fit,
                                 'fit_n', v_new.n_fit, 'expected_accuracy', v_new.v_check, 'check_n', v_new.n_check,
                                 'k_fit_accuracy', v_k.accuracy, 'k_fit_n', v_k.n),
    'in_force', jsonb_build_object('max_distance', v_c0, 'k', v_k0, 'fit_accuracy', v_old.v_fit, 'fit_n', v_old.n_fit,
                                   'check_accuracy', v_old.v_check, 'check_n', v_old.n_check),
    'cutoffs', (SELECT jsonb_agg(jsonb_build_object('max_distance', c, 'fit_accuracy', round(v_fit::numeric, 4),
                                                    'fit_n', n_fit) ORDER BY c) FROM _cutoffs),
    'ks', (SELECT jsonb_agg(jsonb_build_object('k', drawn_k, 'fit_accuracy', round(a::numeric, 4), 'fit_n', n) ORDER BY drawn_k)
           FROM (SELECT drawn_k, avg(y) AS a, count(*) AS n FROM _explored
                 WHERE request_id < v_cut AND d <= v_new.c AND used > 0 GROUP BY drawn_k) ks));
  IF v_new.v_check IS NOT NULL AND v_old.v_check IS NOT NULL AND v_new.v_check < v_old.v_check THEN
    RAISE NOTICE 'memory of %: the newer labels do not confirm cutoff % (% vs % in force); kept',
      p_model_version, v_new.c, round(v_new.v_check::numeric, 3), round(v_old.v_check::numeric, 3);
    RETURN jsonb_build_object('max_distance', v_c0, 'k', v_k0, 'changed', false, 'evidence', v_evidence);
  END IF;
  v_reason := format('on %s older labelled explored answers, memory within cutoff %s was right %s of the time '
                     '(weighted; cutoff in force %s: %s), best with k = %s; on the %s newer ones: %s vs %s',
                     v_evidence ->> 'fit_labels', v_new.c, round(v_new.v_fit::numeric, 3), v_c0,
                     coalesce(round(v_old.v_fit::numeric, 3)::text, 'n/a'), v_k_new, v_evidence ->> 'check_labels',
                     coalesce(round(v_new.v_check::numeric, 3)::text, 'n/a'),
                     coalesce(round(v_old.v_check::numeric, 3)::text, 'n/a'));
  IF abs(v_new.c - v_c0) >= 0.005 THEN
    INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
    VALUES (v_model, 'memory_max_distance', v_c0, v_new.c, v_reason, v_evidence, session_user);
    v_changed := true;
  END IF;
  IF v_new.c > 0 AND v_k_new <> v_k0 THEN
    INSERT INTO reflect.tuning_changes (model_version_id, knob, old_value, new_value, reason, evidence, decided_by)
    VALUES (v_model, 'memory_k', v_k0, v_k_new, v_reason, v_evidence, session_user);
    v_changed := true;
  END IF;
  RETURN jsonb_build_object('max_distance', v_new.c, 'k', CASE WHEN v_new.c > 0 THEN v_k_new ELSE v_k0 END,
                            'changed', v_changed, 'evidence', v_evidence);
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
  RETURN coalesce(reflect._tuned(c.model_version_id, c.knob), reflect._knob_default(c.knob));
END
$$;

-- The scheduled tuning (pg_cron pgreflect-tune-thresholds, hourly): every version with tuning_min_labels
-- labels and at least as many new labels since its last threshold change gets its threshold tuned (one
-- that cannot reach the target keeps its threshold: NOTICE), and every version with
-- memory_tuning_min_labels new labelled explored answers since its last memory change gets its memory cutoff
-- and k tuned. Returns the number of changes recorded.
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
                                          WHERE t.model_version_id = mv.id AND t.knob = 'confidence_threshold'),
                                         '-infinity'))
          >= reflect._setting_int('tuning_min_labels')
  LOOP
    BEGIN
      PERFORM reflect.tune_confidence_threshold_v1(v.name);
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'threshold of % not tuned: %', v.name, SQLERRM;
    END;
  END LOOP;
  FOR v IN
    SELECT mv.name
    FROM reflect.model_versions mv
    WHERE (SELECT count(*) FROM reflect.labels l JOIN reflect.memory_lookups ml ON ml.request_id = l.request_id
           JOIN reflect.requests r ON r.id = l.request_id
           WHERE r.model_version_id = mv.id AND ml.explored
             AND l.created_at > coalesce((SELECT max(decided_at) FROM reflect.tuning_changes t
                                          WHERE t.model_version_id = mv.id AND t.knob LIKE 'memory%'), '-infinity'))
          >= reflect._setting_int('memory_tuning_min_labels')
  LOOP
    BEGIN
      PERFORM reflect.tune_memory_v1(v.name);
    EXCEPTION WHEN SQLSTATE 'PR001' THEN
      RAISE NOTICE 'memory of % not tuned: %', v.name, SQLERRM;
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
