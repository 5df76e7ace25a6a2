-- Campaigns (docs/campaigns.md): applying a document (a new campaign version and the
-- workflow version it compiles into), enrolling contacts (one active enrollment per
-- contact and campaign), and controlling enrollments.

create or replace function conveyor.apply_campaign(p_tenant_id text, p_doc jsonb)
returns table (campaign_id bigint, version integer, workflow_version integer)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_errors text[];
  v_slug text := p_doc ->> 'slug';
  v_workflow jsonb;
  v_campaign conveyor.campaigns;
  v_wf_id bigint;
  v_wf_version integer;
  v_last jsonb;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_errors := array(select conveyor.campaign_errors(p_doc));
  if cardinality(v_errors) = 0 then
    v_errors := array(select conveyor.campaign_template_errors(p_tenant_id, p_doc));
  end if;
  if cardinality(v_errors) = 0 then
    v_workflow := conveyor.compile_campaign(p_doc);
    -- what the engine finds wrong in the compiled workflow is the campaign's problem too
    v_errors := array(select 'compiled workflow ' || e from conveyor.validate_workflow(v_workflow) as e);
  end if;
  if cardinality(v_errors) > 0 then
    raise exception using errcode = '22023',
      message = format('campaign %s: %s problem(s): %s', coalesce(v_slug, '?'), cardinality(v_errors), v_errors[1]),
      detail = array_to_string(v_errors, E'\n');
  end if;
  select * into v_campaign from conveyor.campaigns as c where c.tenant_id = p_tenant_id and c.slug = v_slug for update;
  if found then
    select cv.document into v_last from conveyor.campaign_versions as cv
    where cv.campaign_id = v_campaign.campaign_id and cv.version = v_campaign.current_version;
    if v_last = p_doc then
      return query select v_campaign.campaign_id, v_campaign.current_version,
        (select cv.workflow_version from conveyor.campaign_versions as cv
         where cv.campaign_id = v_campaign.campaign_id and cv.version = v_campaign.current_version);
      return;
    end if;
  end if;
  select p.workflow_id, p.version into v_wf_id, v_wf_version from conveyor.publish(p_tenant_id, v_workflow) as p;
  if v_campaign.campaign_id is null then
    insert into conveyor.campaigns (tenant_id, slug, name, audience, workflow_id, current_version)
    values (p_tenant_id, v_slug, p_doc ->> 'name', p_doc ->> 'audience', v_wf_id, 1)
    returning * into v_campaign;
  else
    update conveyor.campaigns as c
    set current_version = c.current_version + 1, name = p_doc ->> 'name', audience = p_doc ->> 'audience',
      updated_at = now()
    where c.campaign_id = v_campaign.campaign_id
    returning * into v_campaign;
  end if;
  insert into conveyor.campaign_versions (campaign_id, version, tenant_id, document, workflow_version)
  values (v_campaign.campaign_id, v_campaign.current_version, p_tenant_id, p_doc, v_wf_version);
  insert into conveyor.campaign_stats (tenant_id, campaign_id) values (p_tenant_id, v_campaign.campaign_id)
  on conflict do nothing;
  return query select v_campaign.campaign_id, v_campaign.current_version, v_wf_version;
end;
$$;

create or replace function conveyor.campaign_by_slug(p_tenant_id text, p_slug text) returns conveyor.campaigns
language plpgsql
stable
set search_path = ''
as $$
declare
  v_campaign conveyor.campaigns;
begin
  select * into v_campaign from conveyor.campaigns as c where c.tenant_id = p_tenant_id and c.slug = p_slug;
  if not found then
    raise exception using errcode = 'P0002', message = format('campaign "%s" does not exist for tenant "%s"', p_slug,
      p_tenant_id);
  end if;
  return v_campaign;
end;
$$;

-- Enroll contacts by id (at most 1,000 a call). Each id gets one row: 'enrolled', 'already
-- enrolled' (an active or paused enrollment exists: the unique index decides, so racing
-- enrollers enroll a contact once) or 'not found' (no such row of the tenant's).
create or replace function conveyor.enroll_campaign(p_tenant_id text, p_slug text, p_ids text[])
returns table (entity_id text, enrollment_id bigint, execution_id bigint, result text)
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query select * from conveyor.campaign_enroll(p_tenant_id, p_slug, p_ids, true);
end;
$$;

-- The audience rows of p_ids, as {id: row}: compared in the id column's own type, so its
-- index is used, and as text too, so '007' does not find 7. An id the type cannot hold
-- (a bigint column and 'abc') makes it one text comparison over the tenant's rows.
create or replace function conveyor.campaign_contacts(p_entity conveyor.entities, p_tenant_id text, p_ids text[])
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_type text;
  v_rows jsonb;
begin
  select pg_catalog.format_type(a.atttypid, a.atttypmod) into v_type
  from pg_catalog.pg_attribute as a
  where a.attrelid = p_entity.table_name::regclass and a.attname = p_entity.id_column and not a.attisdropped;
  begin
    execute format(
      'select jsonb_object_agg(t.%2$I::text, to_jsonb(t)) from %1$s as t'
      || ' where t.%3$I = $1 and t.%2$I = any($2::%4$s[]) and t.%2$I::text = any($2)',
      p_entity.table_name, p_entity.id_column, p_entity.tenant_column, v_type
    ) into v_rows using p_tenant_id, p_ids;
  exception when data_exception then
    execute format(
      'select jsonb_object_agg(t.%2$I::text, to_jsonb(t)) from %1$s as t where t.%3$I = $1 and t.%2$I::text = any($2)',
      p_entity.table_name, p_entity.id_column, p_entity.tenant_column
    ) into v_rows using p_tenant_id, p_ids;
  end;
  return coalesce(v_rows, '{}');
end;
$$;

-- The enrolling itself, set-based: one query for the contacts, one statement each for
-- freeing, enrolling, linking and starting (a loop of single-row statements per id ran
-- at ~300 ids/s, and its text comparison of the id scanned the audience table per id).
-- p_run: run the new executions' first steps here (one interpreter batch); an enroll step
-- (sql/steps/enroll.sql) passes false and hands them to its own batch.
create or replace function conveyor.campaign_enroll(p_tenant_id text, p_slug text, p_ids text[], p_run boolean)
returns table (entity_id text, enrollment_id bigint, execution_id bigint, result text)
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_campaign conveyor.campaigns;
  v_entity conveyor.entities;
  v_contacts jsonb;
  v_found text[];
  v_enrolled jsonb;
  v_started bigint[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_campaign := conveyor.campaign_by_slug(p_tenant_id, p_slug);
  if v_campaign.paused then
    raise exception using errcode = '55000', message = format('campaign "%s" is paused: resume it to enroll', p_slug);
  end if;
  if cardinality(p_ids) > 1000 then
    raise exception using errcode = '54000', message = format('at most 1000 ids a call (got %s)', cardinality(p_ids));
  end if;
  perform conveyor.require_execution_quota(p_tenant_id);
  select * into v_entity from conveyor.entities as e where e.entity = v_campaign.audience;
  v_contacts := conveyor.campaign_contacts(v_entity, p_tenant_id, p_ids);
  -- sorted: racing enrollers of overlapping ids meet on the unique index in the same order
  v_found := array(select k.id from jsonb_object_keys(v_contacts) as k (id) order by k.id);
  -- an enrollment whose execution ended without finishing it (failed, timed out) frees its contact
  -- (one index probe per id, forced by the lateral: with the table not analyzed since a bulk
  -- enroll the planner walked the campaign's whole index per call, 340 ms with 30,000)
  update conveyor.campaign_enrollments as ce set status = 'failed', finished_at = now()
  from (
    select e.enrollment_id
    from unnest(v_found) as f (id)
    cross join lateral (
      select c.enrollment_id, c.execution_id from conveyor.campaign_enrollments as c
      where c.campaign_id = v_campaign.campaign_id and c.entity_id = f.id and c.status in ('active', 'paused')
      limit 1
    ) as e
    join conveyor.executions as x on x.execution_id = e.execution_id
    where x.status in ('failed', 'timed_out', 'cancelled')
  ) as gone
  where ce.enrollment_id = gone.enrollment_id;
  -- linked before the first steps run, so a finish in the same call finds its enrollment
  with enrolled as (
    insert into conveyor.campaign_enrollments as ce (
      tenant_id, campaign_id, version, entity_type, entity_id, execution_id
    )
    select p_tenant_id, v_campaign.campaign_id, v_campaign.current_version, v_campaign.audience, f.id,
      nextval(pg_get_serial_sequence('conveyor.executions', 'execution_id'))
    from unnest(v_found) as f (id)
    order by f.id
    on conflict (campaign_id, entity_id) where status in ('active', 'paused') do nothing
    returning ce.entity_id, ce.enrollment_id, ce.execution_id
  ),

  started as (
    insert into conveyor.executions (
      execution_id, tenant_id, workflow_id, version, entity_type, entity_id, current_step, trigger, timeout_at
    )
    overriding system value
    select n.execution_id, w.tenant_id, w.workflow_id, v.version, v_campaign.audience, n.entity_id, v.entry_step,
      jsonb_build_object('kind', 'manual', 'entity_type', v_campaign.audience, 'entity_id', n.entity_id,
        'occurred_at', now(), 'depth', 0, 'payload', jsonb_build_object('enrollment_id', n.enrollment_id,
          'campaign_id', v_campaign.campaign_id, 'campaign', jsonb_build_object('slug', v_campaign.slug,
            'name', v_campaign.name, 'version', v_campaign.current_version), 'contact', v_contacts -> n.entity_id)),
      now() + v.timeout
    from enrolled as n
    cross join conveyor.workflows as w
    join conveyor.workflow_versions as v on v.workflow_id = w.workflow_id and v.version = w.current_version
    where w.workflow_id = v_campaign.workflow_id
    order by n.execution_id
    returning execution_id
  )

  select coalesce(jsonb_object_agg(n.entity_id, jsonb_build_array(n.enrollment_id, n.execution_id)), '{}'),
    array(select s.execution_id from started as s order by s.execution_id)
  into v_enrolled, v_started
  from enrolled as n;
  if cardinality(v_started) > 0 then
    insert into conveyor.campaign_stats as s (tenant_id, campaign_id, enrolled)
    values (p_tenant_id, v_campaign.campaign_id, cardinality(v_started))
    on conflict (campaign_id, step_key, variant) do update set enrolled = s.enrolled + excluded.enrolled;
  end if;
  -- one row per id, in the order given; an id given twice is enrolled once
  return query
  select u.id, case when u.first then (v_enrolled -> u.id ->> 0)::bigint end,
    case when u.first then (v_enrolled -> u.id ->> 1)::bigint end,
    case when not v_contacts ? u.id then 'not found' when u.first and v_enrolled ? u.id then 'enrolled'
      else 'already enrolled' end
  from (
    select x.id, x.n, x.n = min(x.n) over (partition by x.id) as first
    from unnest(p_ids) with ordinality as x (id, n)
  ) as u
  order by u.n;
  -- the new executions run their first steps together: one interpreter batch
  if cardinality(v_started) > 0 then
    perform conveyor.record_started(v_started);
    if p_run then
      perform conveyor.run_executions(v_started);
    end if;
  end if;
end;
$$;

-- Enroll the audience rows that satisfy a condition over the row ({"field": "row.status", ...}),
-- at most p_limit (≤ 1,000) of them, in id order.
create or replace function conveyor.enroll_campaign_where(
  p_tenant_id text, p_slug text, p_condition jsonb, p_limit integer default 1000
) returns table (entity_id text, enrollment_id bigint, execution_id bigint, result text)
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_campaign conveyor.campaigns;
  v_entity conveyor.entities;
  v_ids text[];
  v_errors text[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_campaign := conveyor.campaign_by_slug(p_tenant_id, p_slug);
  -- checked like a step's condition, with the root row standing where trigger would
  v_errors := array(select replace(e, 'trigger', 'row') from conveyor.document_condition_errors(
    regexp_replace(p_condition::text, '"field": "row([."])', '"field": "trigger\1', 'g')::jsonb, 'condition', '[]'::jsonb)
    as e);
  if cardinality(v_errors) > 0 then
    raise exception using errcode = '22023', message = v_errors[1];
  end if;
  select * into v_entity from conveyor.entities as e where e.entity = v_campaign.audience;
  execute format(
    'select array(select t.%2$I::text from %1$s as t where t.%3$I = $1 and conveyor.eval_condition($2, '
    || 'jsonb_build_object(''row'', to_jsonb(t))) order by t.%2$I limit $3)',
    v_entity.table_name, v_entity.id_column, v_entity.tenant_column
  ) into v_ids using p_tenant_id, p_condition, least(greatest(p_limit, 0), 1000);
  return query select * from conveyor.enroll_campaign(p_tenant_id, p_slug, v_ids);
end;
$$;

create or replace function conveyor.campaign_stats(p_tenant_id text, p_slug text)
returns table (
  step_key text, variant text, enrolled bigint, sent bigint, delivered bigint, opened bigint,
  clicked bigint, replied bigint, bounced bigint, complained bigint, unsubscribed bigint, completed bigint,
  stopped bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query select s.step_key, s.variant, s.enrolled, s.sent, s.delivered, s.opened, s.clicked, s.replied,
    s.bounced, s.complained, s.unsubscribed, s.completed, s.stopped
  from conveyor.campaign_stats as s
  where s.campaign_id = (conveyor.campaign_by_slug(p_tenant_id, p_slug)).campaign_id
  order by s.step_key, s.variant;
end;
$$;

revoke all on function conveyor.apply_campaign(text, jsonb) from public;
revoke all on function conveyor.enroll_campaign(text, text, text[]) from public;
revoke all on function conveyor.campaign_enroll(text, text, text[], boolean) from public;
revoke all on function conveyor.campaign_contacts(conveyor.entities, text, text[]) from public;
revoke all on function conveyor.enroll_campaign_where(text, text, jsonb, integer) from public;
revoke all on function conveyor.campaign_stats(text, text) from public;

-- What the CLI shows: the tenant's campaigns, and one campaign with its enrollments' counts.
create or replace function conveyor.list_campaigns(p_tenant_id text)
returns table (slug text, name text, audience text, version integer, paused boolean, active bigint, enrolled bigint)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select c.slug, c.name, c.audience, c.current_version, c.paused,
    (select count(*) from conveyor.campaign_enrollments as e where e.campaign_id = c.campaign_id
       and e.status in ('active', 'paused')),
    coalesce((select s.enrolled from conveyor.campaign_stats as s where s.campaign_id = c.campaign_id
       and s.step_key = '' and s.variant = ''), 0)
  from conveyor.campaigns as c where c.tenant_id = p_tenant_id order by c.slug;
end;
$$;

create or replace function conveyor.campaign_detail(p_tenant_id text, p_slug text) returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_campaign conveyor.campaigns;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_campaign := conveyor.campaign_by_slug(p_tenant_id, p_slug);
  return jsonb_build_object(
    'slug', v_campaign.slug, 'name', v_campaign.name, 'audience', v_campaign.audience,
    'version', v_campaign.current_version, 'paused', v_campaign.paused,
    'workflow', 'campaign-' || v_campaign.slug,
    'document', (select v.document from conveyor.campaign_versions as v
      where v.campaign_id = v_campaign.campaign_id and v.version = v_campaign.current_version),
    'enrollments', coalesce((select jsonb_object_agg(e.status, e.n) from (
      select ce.status, count(*) as n from conveyor.campaign_enrollments as ce
      where ce.campaign_id = v_campaign.campaign_id group by ce.status) as e), '{}'),
    'winners', coalesce((select jsonb_agg(to_jsonb(w) - 'tenant_id' - 'campaign_id') from conveyor.campaign_winners as w
      where w.campaign_id = v_campaign.campaign_id), '[]')
  );
end;
$$;

revoke all on function conveyor.list_campaigns(text) from public;
revoke all on function conveyor.campaign_detail(text, text) from public;
