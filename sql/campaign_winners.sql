-- The automatic A/B winner (docs/campaigns.md#ab-variants): for a campaign with `winner`
-- {metric: open | click | reply, min_sample (default 100), z (default 1.96)}, a step's
-- variants are compared once each has been sent min_sample times: the best rate against
-- the second best by a two-proportion z-test (pooled), z = (p1 - p2) / sqrt(p (1 - p)
-- (1/n1 + 1/n2)). At z >= the threshold (1.96: 95 %, two-sided) the best variant wins: the
-- decision and its figures are recorded, and the campaign is applied again with that
-- variant's content in place of the variants, so new enrollments get the winner and the
-- running ones keep their version.
create or replace function conveyor.campaign_decide_winners(p_campaign_id bigint) returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_campaign conveyor.campaigns;
  v_doc jsonb;
  v_step record;
  v_metric text;
  v_min integer;
  v_z numeric;
  v_rows jsonb;
  v_best jsonb;
  v_second jsonb;
  v_n1 numeric;
  v_n2 numeric;
  v_p1 numeric;
  v_p2 numeric;
  v_pool numeric;
  v_stat numeric;
  v_decided integer := 0;
begin
  select * into v_campaign from conveyor.campaigns as c where c.campaign_id = p_campaign_id for update;
  select v.document into v_doc from conveyor.campaign_versions as v
  where v.campaign_id = p_campaign_id and v.version = v_campaign.current_version;
  if v_doc -> 'winner' is null then
    return 0;
  end if;
  v_metric := case v_doc -> 'winner' ->> 'metric' when 'open' then 'opened' when 'click' then 'clicked' else 'replied' end;
  v_min := coalesce((v_doc -> 'winner' ->> 'min_sample')::integer, 100);
  v_z := coalesce((v_doc -> 'winner' ->> 'z')::numeric, 1.96);
  for v_step in select (e.n - 1)::integer as idx, e.s from jsonb_array_elements(v_doc -> 'steps') with ordinality as e (s, n)
    where e.s ? 'variants'
      and not exists (select from conveyor.campaign_winners as w where w.campaign_id = p_campaign_id
        and w.step_key = e.s ->> 'id')
  loop
    select jsonb_agg(jsonb_build_object('variant', s.variant, 'sent', s.sent, 'hits', r.hits,
        'rate', round(r.hits::numeric / greatest(s.sent, 1), 6)) order by r.hits::numeric / greatest(s.sent, 1) desc)
    into v_rows
    from conveyor.campaign_stats as s
    cross join lateral (select (to_jsonb(s) ->> v_metric)::bigint as hits) as r
    where s.campaign_id = p_campaign_id and s.step_key = v_step.s ->> 'id' and s.variant <> '';
    continue when v_rows is null or jsonb_array_length(v_rows) < jsonb_array_length(v_step.s -> 'variants')
      or exists (select from jsonb_array_elements(v_rows) as r (r) where (r.r ->> 'sent')::integer < v_min);
    v_best := v_rows -> 0;
    v_second := v_rows -> 1;
    v_n1 := (v_best ->> 'sent')::numeric;
    v_n2 := (v_second ->> 'sent')::numeric;
    v_p1 := (v_best ->> 'hits')::numeric / v_n1;
    v_p2 := (v_second ->> 'hits')::numeric / v_n2;
    v_pool := ((v_best ->> 'hits')::numeric + (v_second ->> 'hits')::numeric) / (v_n1 + v_n2);
    continue when v_pool <= 0 or v_pool >= 1;
    v_stat := (v_p1 - v_p2) / sqrt(v_pool * (1 - v_pool) * (1 / v_n1 + 1 / v_n2));
    continue when v_stat < v_z;
    insert into conveyor.campaign_winners (campaign_id, step_key, tenant_id, metric, winner, figures, campaign_version)
    values (p_campaign_id, v_step.s ->> 'id', v_campaign.tenant_id, v_doc -> 'winner' ->> 'metric',
      v_best ->> 'variant', jsonb_build_object('variants', v_rows, 'z', round(v_stat, 4), 'threshold', v_z,
        'min_sample', v_min, 'test', 'two-proportion z-test, pooled'), v_campaign.current_version + 1);
    v_doc := jsonb_set(v_doc, array['steps', v_step.idx::text], conveyor.campaign_variant_step(v_step.s, (
      select e.v from jsonb_array_elements(v_step.s -> 'variants') as e (v) where e.v ->> 'name' = v_best ->> 'variant'
    )));
    v_decided := v_decided + 1;
  end loop;
  if v_decided > 0 then
    perform conveyor.apply_campaign(v_campaign.tenant_id, v_doc);
  end if;
  return v_decided;
end;
$$;
