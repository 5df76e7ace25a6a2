-- Campaign content from a notification template (docs/campaigns.md#content-from-a-template):
-- an email or sms step (or variant) may give {"template": "<slug>", "data": {...}} instead
-- of its subject / html / text or body. The template is the tenant's or a system one
-- (sql/notification_templates.sql); its `email` or `sms` part is rendered when the send is
-- due, with `data` (whose values are templates over contact.*, enrollment.*, campaign.*) as
-- its variables. So editing the template changes the sends from then on, as it does for
-- notifications; the campaign's own versions pin everything else.

-- The shape, without the tenant: a slug, an object of variables, and not inline content too.
create or replace function conveyor.campaign_template_shape_errors(p_step jsonb, p_path text)
returns setof text
language plpgsql
immutable
set search_path = ''
as $$
begin
  if p_step ? 'template' then
    if jsonb_typeof(p_step -> 'template') <> 'string' or (p_step ->> 'template') !~ '^[a-z][a-z0-9_.-]{0,63}$' then
      return next format('%s.template: expected a notification template slug (got %s)', p_path,
        (p_step -> 'template')::text);
    end if;
    if p_step ?| array['subject', 'html', 'text', 'body'] then
      return next format('%s: give either "template" or the content (%s), not both', p_path,
        (select string_agg(k, ', ') from unnest(array['subject', 'html', 'text', 'body']) as k where p_step ? k));
    end if;
  end if;
  if p_step ? 'data' then
    if jsonb_typeof(p_step -> 'data') <> 'object' then
      return next format('%s.data: expected an object of template variables (got %s)', p_path, (p_step -> 'data')::text);
    elsif not p_step ? 'template' then
      return next format('%s.data: template variables without a "template"', p_path);
    end if;
  end if;
end;
$$;

-- What only the tenant's templates tell, at apply: each template named exists, has the
-- step's channel, and is given every variable it requires without a default.
create or replace function conveyor.campaign_template_errors(p_tenant_id text, p_doc jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_use record;
  v_template jsonb;
  v_missing text;
begin
  for v_use in
    select format('steps[%s]', s.n - 1) || case when v.n is not null then format('.variants[%s]', v.n - 1) else '' end
        as path,
      s.step ->> 'channel' as channel, coalesce(v.variant, s.step) as content
    from jsonb_array_elements(p_doc -> 'steps') with ordinality as s (step, n)
    left join lateral jsonb_array_elements(case when jsonb_typeof(s.step -> 'variants') = 'array'
      then s.step -> 'variants' end) with ordinality as v (variant, n) on true
    where jsonb_typeof(coalesce(v.variant, s.step) -> 'template') = 'string'
    order by s.n, v.n
  loop
    v_template := conveyor.notification_template(p_tenant_id, v_use.content ->> 'template');
    if v_template is null then
      return next format('%s.template: no notification template "%s" (the tenant''s or a system template)', v_use.path,
        v_use.content ->> 'template');
      continue;
    end if;
    if not v_template ? v_use.channel then
      return next format('%s.template: template "%s" has no %s part', v_use.path, v_use.content ->> 'template',
        v_use.channel);
    end if;
    select string_agg(e.key, ', ' order by e.key) into v_missing
    from jsonb_each(coalesce(v_template -> 'variables', '{}')) as e
    where coalesce((e.value ->> 'required')::boolean, true) and not e.value ? 'default'
      and not coalesce(v_use.content -> 'data', '{}') ? e.key;
    if v_missing is not null then
      return next format('%s.data: template "%s" requires the variable(s) %s, not given', v_use.path,
        v_use.content ->> 'template', v_missing);
    end if;
  end loop;
end;
$$;

-- The content step's rendering, when the send is due: the template's part for the
-- channel ({"subject", "html", "text"} or {"body"}), with the rendered data as variables.
create or replace function conveyor.campaign_content(p_tenant_id text, p_input jsonb, p_where text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_slug text := p_input ->> 'template';
  v_channel text := p_input ->> 'channel';
  v_template jsonb := conveyor.notification_template(p_tenant_id, v_slug);
begin
  if v_template is null or not v_template ? v_channel then
    raise exception using errcode = 'P0002',
      message = format('%s.campaign.template: notification template "%s" does not exist or has no %s part', p_where,
        coalesce(v_slug, 'null'), v_channel);
  end if;
  return conveyor.render_notification_part(v_template, v_slug, v_channel,
    conveyor.notification_template_data(v_template, v_slug, p_input -> 'data', p_where), p_where);
end;
$$;

revoke all on function conveyor.campaign_content(text, jsonb, text) from public;
