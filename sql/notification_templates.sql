-- Notification templates (docs/notifications.md#templates): one document per slug with
-- channel-specific content, rendered with the engine's template language (sql/templates.sql)
-- from the notification's data. The system templates ship with Conveyor (below); a tenant
-- overrides a slug with conveyor.save_notification_template. A document:
--
--   {"variables": {"<name>": {"required"?: true, "default"?: <value>}},
--    "category"?, "type"?, "priority"?,
--    "in_app": {"title", "message"?, "action_url"?, "action_label"?},
--    "email"?: {"subject", "html"?, "text"?, "item_html"?, "item_text"?},
--    "sms"?: {"body"}}
--
-- Templates see the roots `data` (the variables: each `data.<name>` must be declared) and
-- `now`. A required variable the notification does not give is an error naming it; an
-- optional one without a default is null (rendered as nothing). An email's html escapes
-- every value it inserts (`| raw` opts out). item_html / item_text (the digest template)
-- render one digest item each, with the root `item` ({title, message, link, category,
-- created_at}).

-- The template language's roots in a notification template.
create or replace function conveyor.notification_template_roots()
returns text[]
language sql
immutable
parallel safe
set search_path = ''
as $$
  select array['data', 'now', 'item'];
$$;

-- The system templates, by slug: the nine the platform's modules send, and the digest.
create or replace function conveyor.system_notification_templates()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
  select $json${
  "submission_created": {
    "variables": {"form": {}, "submitter": {"required": false, "default": "someone"}, "url": {"required": false}},
    "category": "submissions", "type": "info",
    "in_app": {"title": "New submission to {{data.form}}", "message": "{{data.submitter}} submitted {{data.form}}.",
      "action_url": "{{data.url}}", "action_label": "View submission"},
    "email": {"subject": "New submission to {{data.form}}",
      "html": "<p>{{data.submitter}} submitted <strong>{{data.form}}</strong>.</p><p><a href=\"{{data.url}}\">View submission</a></p>",
      "text": "{{data.submitter}} submitted {{data.form}}.\n{{data.url}}"},
    "sms": {"body": "New submission to {{data.form}} from {{data.submitter}}"}
  },
  "status_changed": {
    "variables": {"subject": {}, "from": {"required": false, "default": "-"}, "to": {}, "url": {"required": false}},
    "category": "status", "type": "info",
    "in_app": {"title": "{{data.subject}} is now {{data.to}}", "message": "Status changed from {{data.from}} to {{data.to}}.",
      "action_url": "{{data.url}}", "action_label": "Open"},
    "email": {"subject": "{{data.subject}} is now {{data.to}}",
      "html": "<p><strong>{{data.subject}}</strong> changed from {{data.from}} to {{data.to}}.</p><p><a href=\"{{data.url}}\">Open</a></p>",
      "text": "{{data.subject}} changed from {{data.from}} to {{data.to}}.\n{{data.url}}"},
    "sms": {"body": "{{data.subject}}: {{data.from}} -> {{data.to}}"}
  },
  "interview_scheduled": {
    "variables": {"candidate": {}, "job": {}, "when": {}, "url": {"required": false}},
    "category": "recruiting", "type": "info", "priority": "high",
    "in_app": {"title": "Interview with {{data.candidate}}", "message": "{{data.job}}, {{data.when}}.",
      "action_url": "{{data.url}}", "action_label": "View interview"},
    "email": {"subject": "Interview scheduled: {{data.candidate}} ({{data.job}})",
      "html": "<p>An interview with <strong>{{data.candidate}}</strong> for {{data.job}} is scheduled for {{data.when}}.</p><p><a href=\"{{data.url}}\">View interview</a></p>",
      "text": "An interview with {{data.candidate}} for {{data.job}} is scheduled for {{data.when}}.\n{{data.url}}"},
    "sms": {"body": "Interview: {{data.candidate}} ({{data.job}}) {{data.when}}"}
  },
  "deal_stage_changed": {
    "variables": {"deal": {}, "stage": {}, "previous_stage": {"required": false, "default": "-"}, "url": {"required": false}},
    "category": "deals", "type": "info",
    "in_app": {"title": "{{data.deal}} moved to {{data.stage}}", "message": "From {{data.previous_stage}} to {{data.stage}}.",
      "action_url": "{{data.url}}", "action_label": "Open deal"},
    "email": {"subject": "{{data.deal}} moved to {{data.stage}}",
      "html": "<p>The deal <strong>{{data.deal}}</strong> moved from {{data.previous_stage}} to {{data.stage}}.</p><p><a href=\"{{data.url}}\">Open deal</a></p>",
      "text": "The deal {{data.deal}} moved from {{data.previous_stage}} to {{data.stage}}.\n{{data.url}}"},
    "sms": {"body": "{{data.deal}}: now {{data.stage}}"}
  },
  "deal_won": {
    "variables": {"deal": {}, "amount": {"required": false, "default": ""}, "url": {"required": false}},
    "category": "deals", "type": "success",
    "in_app": {"title": "Deal won: {{data.deal}}", "message": "{{data.deal}} was won. {{data.amount}}",
      "action_url": "{{data.url}}", "action_label": "Open deal"},
    "email": {"subject": "Deal won: {{data.deal}}",
      "html": "<p>The deal <strong>{{data.deal}}</strong> was won. {{data.amount}}</p><p><a href=\"{{data.url}}\">Open deal</a></p>",
      "text": "The deal {{data.deal}} was won. {{data.amount}}\n{{data.url}}"},
    "sms": {"body": "Deal won: {{data.deal}} {{data.amount}}"}
  },
  "task_assigned": {
    "variables": {"task": {}, "assigned_by": {"required": false, "default": "someone"}, "due": {"required": false, "default": "no due date"}, "url": {"required": false}},
    "category": "tasks", "type": "action_required",
    "in_app": {"title": "Task assigned: {{data.task}}", "message": "{{data.assigned_by}} assigned you a task (due {{data.due}}).",
      "action_url": "{{data.url}}", "action_label": "Open task"},
    "email": {"subject": "Task assigned: {{data.task}}",
      "html": "<p>{{data.assigned_by}} assigned you <strong>{{data.task}}</strong> (due {{data.due}}).</p><p><a href=\"{{data.url}}\">Open task</a></p>",
      "text": "{{data.assigned_by}} assigned you {{data.task}} (due {{data.due}}).\n{{data.url}}"},
    "sms": {"body": "Task: {{data.task}} (due {{data.due}})"}
  },
  "approval_required": {
    "variables": {"subject": {}, "requested_by": {"required": false, "default": "someone"}, "url": {"required": false}},
    "category": "approvals", "type": "action_required", "priority": "high",
    "in_app": {"title": "Approval required: {{data.subject}}", "message": "{{data.requested_by}} asks for your approval.",
      "action_url": "{{data.url}}", "action_label": "Review"},
    "email": {"subject": "Approval required: {{data.subject}}",
      "html": "<p>{{data.requested_by}} asks for your approval of <strong>{{data.subject}}</strong>.</p><p><a href=\"{{data.url}}\">Review</a></p>",
      "text": "{{data.requested_by}} asks for your approval of {{data.subject}}.\n{{data.url}}"},
    "sms": {"body": "Approval required: {{data.subject}}"}
  },
  "campaign_activated": {
    "variables": {"campaign": {}, "url": {"required": false}},
    "category": "campaigns", "type": "success",
    "in_app": {"title": "Campaign live: {{data.campaign}}", "message": "{{data.campaign}} is now active.",
      "action_url": "{{data.url}}", "action_label": "Open campaign"},
    "email": {"subject": "Campaign live: {{data.campaign}}",
      "html": "<p>The campaign <strong>{{data.campaign}}</strong> is now active.</p><p><a href=\"{{data.url}}\">Open campaign</a></p>",
      "text": "The campaign {{data.campaign}} is now active.\n{{data.url}}"},
    "sms": {"body": "Campaign live: {{data.campaign}}"}
  },
  "mentioned": {
    "variables": {"author": {}, "where": {}, "excerpt": {"required": false, "default": ""}, "url": {"required": false}},
    "category": "mentions", "type": "info",
    "in_app": {"title": "{{data.author}} mentioned you", "message": "In {{data.where}}: {{data.excerpt}}",
      "action_url": "{{data.url}}", "action_label": "View"},
    "email": {"subject": "{{data.author}} mentioned you in {{data.where}}",
      "html": "<p>{{data.author}} mentioned you in {{data.where}}:</p><blockquote>{{data.excerpt}}</blockquote><p><a href=\"{{data.url}}\">View</a></p>",
      "text": "{{data.author}} mentioned you in {{data.where}}:\n{{data.excerpt}}\n{{data.url}}"},
    "sms": {"body": "{{data.author}} mentioned you in {{data.where}}"}
  },
  "digest": {
    "variables": {"count": {}, "period": {}, "items_html": {}, "items_text": {}},
    "category": "digest",
    "in_app": {"title": "Your {{data.period}} digest"},
    "email": {"subject": "Your {{data.period}} digest: {{data.count}} notification(s)",
      "html": "<p>{{data.count}} notification(s) since your last digest:</p><ul>{{data.items_html | raw}}</ul>",
      "text": "{{data.count}} notification(s) since your last digest:\n{{data.items_text}}",
      "item_html": "<li><a href=\"{{item.link}}\">{{item.title}}</a>: {{item.message}}</li>",
      "item_text": "- {{item.title}}: {{item.message}} {{item.link}}\n"}
  }
}$json$::jsonb;
$$;

-- The problems of a template document, each `<path>: <what is wrong>` (p_path: where it
-- is, e.g. 'template "welcome"').
create or replace function conveyor.notification_template_errors(p_doc jsonb, p_path text)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
declare
  v_channels jsonb := '{"in_app": ["title", "message", "action_url", "action_label"],
    "email": ["subject", "html", "text", "item_html", "item_text"], "sms": ["body"]}';
  v_channel text;
  v_key text;
  v_vars jsonb := coalesce(p_doc -> 'variables', '{}');
  v_var record;
begin
  if jsonb_typeof(p_doc) is distinct from 'object' then
    return next format('%s: expected a template object with "in_app" (got %s)', p_path,
      coalesce(jsonb_typeof(p_doc), 'nothing'));
    return;
  end if;
  return query
  select format('%s.%s: unknown key (expected variables, category, type, priority, in_app, email, sms)', p_path, k)
  from jsonb_object_keys(p_doc) as k
  where k not in ('variables', 'category', 'type', 'priority', 'in_app', 'email', 'sms')
  order by k;
  if pg_catalog.length(p_doc::text) > conveyor.max_rendered_bytes() then
    return next format('%s: %s bytes, over the limit of %s (setting conveyor.max_rendered_bytes)', p_path,
      pg_catalog.length(p_doc::text), conveyor.max_rendered_bytes());
    return;
  end if;

  if jsonb_typeof(v_vars) <> 'object' then
    return next format('%s.variables: expected an object of variable names (got %s)', p_path, v_vars::text);
    v_vars := '{}';
  end if;
  for v_var in select e.key, e.value from jsonb_each(v_vars) as e order by e.key loop
    if v_var.key !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
      return next format('%s.variables.%s: a variable name is letters, digits and _', p_path, v_var.key);
    elsif jsonb_typeof(v_var.value) <> 'object' then
      return next format('%s.variables.%s: expected an object ({"required": .., "default": ..})', p_path, v_var.key);
    else
      return query
      select format('%s.variables.%s.%s: unknown key (expected required, default)', p_path, v_var.key, k)
      from jsonb_object_keys(v_var.value) as k where k not in ('required', 'default') order by k;
      if (v_var.value ? 'required') and jsonb_typeof(v_var.value -> 'required') <> 'boolean' then
        return next format('%s.variables.%s.required: expected true or false', p_path, v_var.key);
      end if;
    end if;
  end loop;

  foreach v_key in array array['category', 'type', 'priority'] loop
    if (p_doc ? v_key) and jsonb_typeof(p_doc -> v_key) <> 'string' then
      return next format('%s.%s: expected a text (got %s)', p_path, v_key, (p_doc -> v_key)::text);
    end if;
  end loop;
  if (p_doc ? 'type') and (p_doc -> 'type') not in ('"info"', '"success"', '"warning"', '"error"', '"action_required"') then
    return next format('%s.type: unknown type %s (expected info, success, warning, error or action_required)',
      p_path, (p_doc -> 'type')::text);
  end if;
  if (p_doc ? 'priority') and (p_doc -> 'priority') not in ('"low"', '"normal"', '"high"', '"critical"') then
    return next format('%s.priority: unknown priority %s (expected low, normal, high or critical)',
      p_path, (p_doc -> 'priority')::text);
  end if;

  if not p_doc ? 'in_app' then
    return next format('%s.in_app: missing (every template has the in-app title)', p_path);
  end if;
  for v_channel in select c from jsonb_object_keys(v_channels) as c order by c loop
    continue when not p_doc ? v_channel;
    if jsonb_typeof(p_doc -> v_channel) <> 'object' then
      return next format('%s.%s: expected an object', p_path, v_channel);
      continue;
    end if;
    return query
    select format('%s.%s.%s: unknown key (expected %s)', p_path, v_channel, k,
      (select string_agg(x, ', ') from jsonb_array_elements_text(v_channels -> v_channel) as x))
    from jsonb_object_keys(p_doc -> v_channel) as k
    where not (v_channels -> v_channel) ? k
    order by k;
    return query
    select format('%s.%s.%s: expected a text (got %s)', p_path, v_channel, e.key, e.value::text)
    from jsonb_each(p_doc -> v_channel) as e
    where (v_channels -> v_channel) ? e.key and jsonb_typeof(e.value) <> 'string'
    order by e.key;
  end loop;
  if jsonb_typeof(p_doc -> 'in_app') = 'object' and coalesce(btrim(p_doc #>> '{in_app,title}'), '') = '' then
    return next format('%s.in_app.title: required (a non-empty text)', p_path);
  end if;
  if jsonb_typeof(p_doc -> 'email') = 'object' then
    if coalesce(btrim(p_doc #>> '{email,subject}'), '') = '' then
      return next format('%s.email.subject: required (a non-empty text)', p_path);
    end if;
    if not (p_doc -> 'email' ?| array['html', 'text']) then
      return next format('%s.email: needs "html" or "text"', p_path);
    end if;
  end if;
  if jsonb_typeof(p_doc -> 'sms') = 'object' and coalesce(btrim(p_doc #>> '{sms,body}'), '') = '' then
    return next format('%s.sms.body: required (a non-empty text)', p_path);
  end if;

  -- the templates: valid expressions over data / now / item, each data.<name> declared
  return query
  select t.message
  from jsonb_each(p_doc - 'variables' - 'category' - 'type' - 'priority') as c (channel, content)
  cross join lateral conveyor.template_errors(c.content, p_path || '.' || c.channel,
    conveyor.notification_template_roots()) as t (message);
  return query
  select distinct format('%s: {{%s}}: variable "%s" is not declared in %s.variables', s.path, btrim(m[1]),
    p.t #>> '{path,1}', p_path)
  from conveyor.json_strings(p_doc - 'variables', p_path) as s
  cross join lateral regexp_matches(s.value, conveyor.template_pattern(), 'g') as m
  cross join lateral conveyor.template_parse(m[1]) as p (t)
  where p.t #>> '{path,0}' = 'data' and p.t #>> '{path,1}' is not null and not v_vars ? (p.t #>> '{path,1}');
end;
$$;

-- The template a tenant's notification of p_slug uses: the tenant's override, else the
-- system template; null when neither exists.
create or replace function conveyor.notification_template(p_tenant_id text, p_slug text)
returns jsonb
language sql
stable
set search_path = ''
as $$
  select coalesce(
    (select t.document from conveyor.notification_templates as t where t.tenant_id = p_tenant_id and t.slug = p_slug),
    conveyor.system_notification_templates() -> p_slug
  );
$$;

-- The variables a template renders with: p_data's declared ones, each default filled in;
-- a required variable p_data lacks (or gives as null) raises, naming it and p_where.
create or replace function conveyor.notification_template_data(p_doc jsonb, p_slug text, p_data jsonb, p_where text)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_data jsonb := '{}';
  v_var record;
  v_missing text[];
begin
  if p_data is not null and jsonb_typeof(p_data) <> 'object' then
    raise exception using errcode = '22023',
      message = format('%s.data: expected an object of template variables (got %s)', p_where, p_data::text);
  end if;
  for v_var in select e.key, e.value from jsonb_each(coalesce(p_doc -> 'variables', '{}')) as e order by e.key loop
    if coalesce(p_data -> v_var.key, 'null') <> 'null' then
      v_data := v_data || jsonb_build_object(v_var.key, p_data -> v_var.key);
    elsif v_var.value ? 'default' then
      v_data := v_data || jsonb_build_object(v_var.key, v_var.value -> 'default');
    elsif coalesce((v_var.value ->> 'required')::boolean, true) then
      v_missing := v_missing || v_var.key;
    else
      v_data := v_data || jsonb_build_object(v_var.key, 'null'::jsonb);
    end if;
  end loop;
  if cardinality(v_missing) > 0 then
    raise exception using errcode = '22023',
      message = format('%s.data: template "%s" requires the variable(s) %s, not given', p_where, p_slug,
        array_to_string(v_missing, ', ')),
      hint = format('Give them in data: {%s}', (select string_agg(format('"%s": ...', m), ', ') from unnest(v_missing) as m));
  end if;
  return v_data;
end;
$$;

-- One channel's part of a template, rendered with the variables (p_data from
-- notification_template_data); an email's html escapes the values it inserts. Errors name
-- p_where, the template and the field.
create or replace function conveyor.render_notification_part(
  p_doc jsonb, p_slug text, p_channel text, p_data jsonb, p_where text
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
  v_context jsonb := jsonb_build_object('data', p_data, 'now', to_jsonb(now()));
  v_part jsonb := '{}';
  v_field record;
begin
  for v_field in
    select e.key, e.value #>> '{}' as text from jsonb_each(p_doc -> p_channel) as e
    where e.key not in ('item_html', 'item_text') order by e.key
  loop
    v_part := v_part || jsonb_build_object(v_field.key, conveyor.render_string(
      v_field.text, v_context, format('%s: template "%s" %s.%s', p_where, p_slug, p_channel, v_field.key), null,
      p_channel = 'email' and v_field.key = 'html'
    ));
  end loop;
  return v_part;
end;
$$;

-- Saves a tenant's template of p_slug (a new slug, or an override of a system template),
-- checked first: the problems are listed with their paths and nothing is saved.
create or replace function conveyor.save_notification_template(p_tenant_id text, p_slug text, p_document jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_problems text[];
begin
  perform conveyor.require_tenant(p_tenant_id);
  if p_slug is null or p_slug !~ '^[a-z][a-z0-9_.-]{0,63}$' then
    raise exception using errcode = '22023',
      message = format('template slug %L: expected lower-case letters, digits, _ . - (at most 64, starting with a letter)',
        p_slug);
  end if;
  v_problems := array(select conveyor.notification_template_errors(p_document, format('template "%s"', p_slug)));
  if cardinality(v_problems) > 0 then
    raise exception using errcode = '22023',
      message = format('template "%s": %s problem(s): %s', p_slug, cardinality(v_problems), v_problems[1]),
      detail = array_to_string(v_problems, e'\n'),
      hint = 'Fix the problems listed (one per line, each with its path) and save again; nothing was saved.';
  end if;
  insert into conveyor.notification_templates as t (tenant_id, slug, document)
  values (p_tenant_id, p_slug, p_document)
  on conflict (tenant_id, slug) do update set document = excluded.document, updated_at = now();
end;
$$;

-- The templates a tenant's notifications may name: the system ones and the tenant's
-- (source 'tenant' overrides the system template of the same slug), by slug.
create or replace function conveyor.list_notification_templates(p_tenant_id text)
returns table (slug text, source text, document jsonb, updated_at timestamptz)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  return query
  select coalesce(t.slug, s.key), case when t.slug is null then 'system' else 'tenant' end,
    coalesce(t.document, s.value), t.updated_at
  from jsonb_each(conveyor.system_notification_templates()) as s
  full join (select * from conveyor.notification_templates as x where x.tenant_id = p_tenant_id) as t on t.slug = s.key
  order by 1;
end;
$$;

-- Deletes a tenant's template (an override: the system template applies again); whether
-- there was one.
create or replace function conveyor.delete_notification_template(p_tenant_id text, p_slug text)
returns boolean
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform conveyor.require_tenant(p_tenant_id);
  delete from conveyor.notification_templates as t where t.tenant_id = p_tenant_id and t.slug = p_slug;
  return found;
end;
$$;

-- What only the tenant's templates tell at publish: a notify step naming (literally) a
-- template slug that is neither the tenant's nor a system template.
create or replace function conveyor.document_notify_template_errors(p_tenant_id text, p_document jsonb)
returns setof text
language plpgsql
stable
set search_path = ''
as $$
begin
  return query
  select format('%s.notify.template: no notification template "%s" (the tenant''s or a system template)',
    t.path, t.name)
  from conveyor.document_literal_names(p_document, 'notify', 'template') as t
  where conveyor.notification_template(p_tenant_id, t.name) is null;
end;
$$;
