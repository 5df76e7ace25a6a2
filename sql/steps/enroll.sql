-- The enroll step: {"id", "enroll": {"campaign": "<slug>" | "{{...}}", "id"?}, "next"?}:
-- enrolls one row of the campaign's audience (by default the execution's own entity) in the
-- tenant's campaign (docs/campaigns.md#enrolling), in the step's transaction. Its output is
-- {"campaign", "entity_id", "result": "enrolled" | "already enrolled", "enrollment_id"?,
-- "execution_id"?}; the new enrollment's first steps run in the same interpreter batch, as
-- a call's child does. A row the audience table does not have, or a paused campaign, fails
-- the step. A literal slug the tenant has no campaign for is refused at publish
-- (conveyor.document_enroll_errors).

create or replace function conveyor.step_enroll_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_spec jsonb := p_step -> 'enroll';
  v_path text := p_path || '.enroll';
begin
  if jsonb_typeof(v_spec) is distinct from 'object' then
    return next format('%s: expected an object with "campaign" (a campaign slug)', v_path);
    return;
  end if;
  return query
  select k.message from conveyor.document_key_errors(v_spec, v_path, array['campaign'], array['id']) as k (message);
  if v_spec ? 'campaign' then
    if jsonb_typeof(v_spec -> 'campaign') <> 'string' then
      return next format('%s.campaign: expected a campaign slug or a template (got %s)', v_path,
        (v_spec -> 'campaign')::text);
    elsif strpos(v_spec ->> 'campaign', '{{') = 0 and (v_spec ->> 'campaign') !~ '^[a-z0-9][a-z0-9-]*$' then
      return next format('%s.campaign: invalid slug "%s" (lowercase letters, digits and -)', v_path,
        v_spec ->> 'campaign');
    end if;
  end if;
  if v_spec ? 'id' and (jsonb_typeof(v_spec -> 'id') not in ('string', 'number') or btrim(v_spec ->> 'id') = '') then
    return next format('%s.id: expected the id of the row to enroll, or a template (got %s)', v_path,
      (v_spec -> 'id')::text);
  end if;
  return query select t.message from conveyor.document_template_errors(v_spec, v_path, p_step_ids) as t (message);
end;
$$;

-- Enroll steps a document cannot run for the tenant: a literal campaign slug it has no
-- campaign for. Checked by conveyor.publish.
create or replace function conveyor.document_enroll_errors(p_tenant_id text, p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select format('%s.enroll.campaign: tenant "%s" has no campaign "%s"', c.path, p_tenant_id, c.name)
  from conveyor.document_literal_names(p_document, 'enroll', 'campaign') as c
  where not exists (select from conveyor.campaigns as k where k.tenant_id = p_tenant_id and k.slug = c.name);
end;
$$;

-- One enroll step's enrolling. A dry run says what would happen and changes nothing.
create or replace function conveyor.enroll_from_step(
  p_exec conveyor.executions, p_input jsonb, p_dry boolean, p_where text
) returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_slug text := p_input ->> 'campaign';
  v_id text := coalesce(p_input ->> 'id', p_exec.entity_id);
  v_campaign conveyor.campaigns;
  v_row record;
begin
  select * into v_campaign from conveyor.campaigns as c where c.tenant_id = p_exec.tenant_id and c.slug = v_slug;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('%s.enroll.campaign: tenant "%s" has no campaign "%s"', p_where, p_exec.tenant_id,
        coalesce(v_slug, 'null'));
  end if;
  if v_id is null or v_id = '' then
    raise exception using errcode = '22023',
      message = format('%s.enroll.id: no id to enroll (the execution has no entity; give "id")', p_where);
  end if;
  if v_campaign.paused then
    raise exception using errcode = '55000',
      message = format('%s.enroll.campaign: campaign "%s" is paused: resume it to enroll', p_where, v_slug);
  end if;
  if p_dry then
    return jsonb_build_object('campaign', v_slug, 'entity_id', v_id, 'result',
      case when exists (select from conveyor.campaign_enrollments as ce where ce.campaign_id = v_campaign.campaign_id
        and ce.entity_id = v_id and ce.status in ('active', 'paused')) then 'already enrolled' else 'would enroll' end);
  end if;
  select * into v_row from conveyor.campaign_enroll(p_exec.tenant_id, v_slug, array[v_id], false);
  if v_row.result = 'not found' then
    raise exception using errcode = 'P0002',
      message = format('%s.enroll.id: campaign "%s" enrolls %s rows, and tenant "%s" has no %s %s', p_where, v_slug,
        v_campaign.audience, p_exec.tenant_id, v_campaign.audience, v_id);
  end if;
  return jsonb_strip_nulls(jsonb_build_object('campaign', v_slug, 'entity_id', v_id, 'result', v_row.result,
    'enrollment_id', v_row.enrollment_id, 'execution_id', v_row.execution_id));
end;
$$;

revoke all on function conveyor.enroll_from_step(conveyor.executions, jsonb, boolean, text) from public;

-- How an enroll step runs (put into the interpreter by conveyor.generate_interpreter,
-- sql/step_kinds.sql).
create or replace function conveyor.step_enroll_code()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select pg_catalog.jsonb_build_object(
    'run', $code$
v_output := conveyor.enroll_from_step(v_exec, v_input, v_dry, v_where);
-- the enrollment's first steps run once this batch is written, as a call's child does
if v_output ? 'execution_id' then
  v_spawned := v_spawned || (v_output ->> 'execution_id')::bigint;
end if;
$code$,
    'decision', $code$coalesce(p_output ->> 'result', '?') || ' in ' || coalesce(p_input ->> 'campaign', '?')$code$
  );
$$;
