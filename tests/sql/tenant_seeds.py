"""Rows of two tenants in every tenant-owned table, for the isolation tests: the seeds, the
catalog query that lists the tenant tables, and a row count under the session's tenant.
The `two_tenants` fixture (tests/sql/conftest.py) plants them."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]

# Rows of one tenant per tenant-owned table, in foreign-key order. Every tenant table
# must be here (test_every_tenant_table_is_seeded_for_the_isolation_tests): a new table
# joins the isolation tests by getting a seed. The catalog tests in tests/sql/test_tenancy.py
# check every tenant table's row-level security and privileges whether seeded or not.
SEEDS: dict[str, str] = {
    "tenants": "select 1",  # created by conveyor.create_tenant in the two_tenants fixture
    "events": "select conveyor.emit(%(t)s, 'crm.contact.created', jsonb_build_object('secret', 'of-' || %(t)s))",
    "workflows": "insert into conveyor.workflows (tenant_id, slug, name) values (%(t)s, 'follow-up', 'Follow up')",
    "workflow_versions": """
        insert into conveyor.workflow_versions (workflow_id, version, tenant_id, definition, entry_step)
        select workflow_id, 1, tenant_id, '{}', 'a' from conveyor.workflows where tenant_id = %(t)s""",
    "workflow_steps": """
        insert into conveyor.workflow_steps (workflow_id, version, step_id, tenant_id, position, kind)
        select workflow_id, 1, 'a', tenant_id, 0, 'stop' from conveyor.workflows where tenant_id = %(t)s""",
    "subscriptions": """
        insert into conveyor.subscriptions (tenant_id, workflow_id, version, match_key)
        select tenant_id, workflow_id, 1, 'crm.contact.created' from conveyor.workflows where tenant_id = %(t)s""",
    "executions": """
        insert into conveyor.executions (tenant_id, workflow_id, version, event_id, current_step)
        select w.tenant_id, w.workflow_id, 1, e.event_id, 'a'
        from conveyor.workflows as w join conveyor.events as e using (tenant_id)
        where w.tenant_id = %(t)s""",
    "step_runs": """
        insert into conveyor.step_runs (execution_id, tenant_id, step_id, status)
        select execution_id, tenant_id, 'a', 'running' from conveyor.executions where tenant_id = %(t)s""",
    "execution_logs": """
        insert into conveyor.execution_logs (tenant_id, execution_id, level, message)
        select tenant_id, execution_id, 'info', 'started' from conveyor.executions where tenant_id = %(t)s""",
    "workflow_stats": """
        insert into conveyor.workflow_stats (workflow_id, shard, tenant_id, started)
        select workflow_id, 0, tenant_id, 1 from conveyor.workflows where tenant_id = %(t)s""",
    "connections": "insert into conveyor.connections (tenant_id, name, kind) values (%(t)s, 'smtp-main', 'smtp')",
    "tenant_usage": """
        insert into conveyor.tenant_usage (tenant_id, period_start, shard, executions)
        values (%(t)s, '2026-01-01', 0, 7)""",
    "schedules": """
        insert into conveyor.schedules (tenant_id, workflow_id, cron)
        select tenant_id, workflow_id, '0 9 * * *' from conveyor.workflows where tenant_id = %(t)s""",
    "schedule_firings": """
        insert into conveyor.schedule_firings (schedule_id, slot, tenant_id, outcome, execution_id)
        select s.schedule_id, '2026-01-01 09:00Z', s.tenant_id, 'started', e.execution_id
        from conveyor.schedules as s join conveyor.executions as e using (tenant_id)
        where s.tenant_id = %(t)s""",
    "webhook_endpoints": """
        insert into conveyor.webhook_endpoints (tenant_id, workflow_id, path_token, secret)
        select tenant_id, workflow_id, md5(tenant_id) || md5(tenant_id), repeat('s', 32)
        from conveyor.workflows where tenant_id = %(t)s""",
    "webhook_deliveries": """
        insert into conveyor.webhook_deliveries (endpoint_id, delivery_id, tenant_id)
        select endpoint_id, 'delivery-1', tenant_id from conveyor.webhook_endpoints where tenant_id = %(t)s""",
    "api_keys": """
        insert into conveyor.api_keys (tenant_id, name, key_hash)
        values (%(t)s, 'default', sha256(convert_to(%(t)s, 'UTF8')))""",
    "date_triggers": """
        insert into conveyor.date_triggers (
          workflow_id, tenant_id, entity, date_column, offset_by, event_source, event_entity
        )
        select workflow_id, tenant_id, 'contact', 'joined_at', '30 days', 'crm', 'contact'
        from conveyor.workflows where tenant_id = %(t)s""",
    "waits": """
        insert into conveyor.waits (execution_id, tenant_id, event_key, match_paths, match_values, since, step_id)
        select execution_id, tenant_id, 'email.message.replied', '{}', '{}', now(), 'a'
        from conveyor.executions where tenant_id = %(t)s""",
    "fanouts": """
        insert into conveyor.fanouts (
          tenant_id, execution_id, step_id, visit, kind, join_mode, needed, on_child_error, total
        )
        select tenant_id, execution_id, 'fan', 1, 'parallel', 'all', 1, 'fail', 1
        from conveyor.executions where tenant_id = %(t)s""",
    "dead_letters": """
        insert into conveyor.dead_letters (tenant_id, msg_id, message, reason, last_error, attempts)
        values (%(t)s, 1, jsonb_build_object('tenant_id', %(t)s::text), 'max_deliveries', 'delivered 5 times', 6)""",
    "date_trigger_firings": """
        insert into conveyor.date_trigger_firings (workflow_id, entity_id, date_value, tenant_id, due_at)
        select workflow_id, '1', '2026-01-01', tenant_id, '2026-01-31' from conveyor.date_triggers
        where tenant_id = %(t)s""",
    "event_chains": """
        insert into conveyor.event_chains (root_event_id, tenant_id, events)
        select event_id, tenant_id, 1 from conveyor.events where tenant_id = %(t)s""",
    "tenant_event_rates": """
        insert into conveyor.tenant_event_rates (tenant_id, minute, shard, events)
        values (%(t)s, date_trunc('minute', now()), 0, 1)""",
    "notifications": """
        insert into conveyor.notifications (tenant_id, user_id, title)
        values (%(t)s, 'u1', 'Secret of ' || %(t)s)""",
    "notification_templates": """
        insert into conveyor.notification_templates (tenant_id, slug, document)
        values (%(t)s, 'welcome', jsonb_build_object('in_app', jsonb_build_object('title', 'Hi from ' || %(t)s)))""",
    "notification_preferences": """
        insert into conveyor.notification_preferences (tenant_id, user_id, category, preferences)
        values (%(t)s, 'u1', '*', '{"frequency": "daily_digest"}')""",
    "notification_channels": """
        insert into conveyor.notification_channels (tenant_id, channel, connection_name)
        values (%(t)s, 'email', 'smtp-main')""",
    "notification_digests": """
        insert into conveyor.notification_digests (tenant_id, user_id, frequency, due_at)
        values (%(t)s, 'u1', 'daily_digest', '2026-01-02 08:00Z')""",
    "notification_deliveries": """
        insert into conveyor.notification_deliveries (tenant_id, notification_id, user_id, channel, address, status)
        select tenant_id, notification_id, user_id, 'email', 'u1@' || %(t)s || '.test', 'sent'
        from conveyor.notifications where tenant_id = %(t)s""",
    "flow_slots": """
        insert into conveyor.flow_slots (tenant_id, workflow_id, key, running)
        select tenant_id, workflow_id, 'deal-1', 1 from conveyor.workflows where tenant_id = %(t)s""",
    "flow_debounces": """
        insert into conveyor.flow_debounces (tenant_id, workflow_id, key, execution_id)
        select tenant_id, workflow_id, 'deal-1', execution_id from conveyor.executions where tenant_id = %(t)s""",
    "flow_throttles": """
        insert into conveyor.flow_throttles (tenant_id, workflow_id, key, window_start, started)
        select tenant_id, workflow_id, 'deal-1', date_trunc('hour', now()), 1
        from conveyor.workflows where tenant_id = %(t)s""",
    "approval_requests": """
        insert into conveyor.approval_requests (
          tenant_id, execution_id, workflow_id, step_id, visit, title, mode, quorum, needed, approvers,
          delegated_from, votes
        )
        select tenant_id, execution_id, workflow_id, 'a', 1, 'Secret of ' || %(t)s, 'parallel', 'all', 1,
          '{u1}', '{NULL}', '{NULL}'
        from conveyor.executions where tenant_id = %(t)s""",
    "approval_decisions": """
        insert into conveyor.approval_decisions (tenant_id, request_id, user_id, decision, note)
        select tenant_id, request_id, 'u1', 'delegate', 'Secret of ' || %(t)s
        from conveyor.approval_requests where tenant_id = %(t)s""",
    "campaigns": """
        insert into conveyor.campaigns (tenant_id, slug, name, audience, workflow_id, current_version)
        select tenant_id, 'welcome', 'Welcome', 'contact', workflow_id, 1
        from conveyor.workflows where tenant_id = %(t)s""",
    "campaign_versions": """
        insert into conveyor.campaign_versions (campaign_id, version, tenant_id, document, workflow_version)
        select campaign_id, 1, tenant_id, '{}', 1 from conveyor.campaigns where tenant_id = %(t)s""",
    "campaign_enrollments": """
        insert into conveyor.campaign_enrollments (tenant_id, campaign_id, version, entity_type, entity_id)
        select tenant_id, campaign_id, 1, 'contact', '1' from conveyor.campaigns where tenant_id = %(t)s""",
    "campaign_stats": """
        insert into conveyor.campaign_stats (tenant_id, campaign_id, sent)
        select tenant_id, campaign_id, 1 from conveyor.campaigns where tenant_id = %(t)s""",
    "campaign_send_slots": """
        insert into conveyor.campaign_send_slots (tenant_id, key, minute, used) values (%(t)s, 'email', now(), 1)""",
    "campaign_send_cursors": """
        insert into conveyor.campaign_send_cursors (tenant_id, key, per_minute, scope, from_minute, next_minute)
        values (%(t)s, 'email', 100, '', now(), now())""",
    "campaign_winners": """
        insert into conveyor.campaign_winners (campaign_id, step_key, tenant_id, metric, winner, figures, campaign_version)
        select campaign_id, 'hello', tenant_id, 'open', 'a', '{}', 1 from conveyor.campaigns where tenant_id = %(t)s""",
    "email_messages": """
        insert into conveyor.email_messages (tenant_id, to_address, message_id, tags)
        values (%(t)s, 'lead@' || %(t)s || '.test', '<m1@' || %(t)s || '.test>', '{"campaign_id": "c1"}')""",
    "email_events": """
        insert into conveyor.email_events (tenant_id, event_key, email_message_id, kind, occurred_at)
        select tenant_id, 'id:ev-1', id, 'delivered', now() from conveyor.email_messages where tenant_id = %(t)s""",
    "email_suppressions": """
        insert into conveyor.email_suppressions (tenant_id, address, reason)
        values (%(t)s, 'gone@' || %(t)s || '.test', 'unsubscribed')""",
    "email_webhooks": """
        insert into conveyor.email_webhooks (tenant_id, provider, path_token, secret)
        values (%(t)s, 'svix', md5(%(t)s) || md5(%(t)s), 'whsec_' || md5(%(t)s))""",
}
# Platform-wide rows some seeds refer to (not tenant data).
SHARED_SEEDS = [
    "insert into conveyor.entities (entity, table_name, id_column, tenant_column) "
    "values ('contact', 'conveyor.tenants', 'tenant_id', 'tenant_id')",
]

# Every table in the conveyor schema that carries a tenant_id column or has RLS enabled.
TENANT_TABLES = """
select c.relname::text as table_name, c.relrowsecurity as rls, c.relforcerowsecurity as forced,
       exists (select from pg_attribute as a
               where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped) as has_tenant_id,
       exists (select from pg_policy as p
               where p.polrelid = c.oid and p.polcmd = '*' and p.polpermissive
                 and pg_get_expr(p.polqual, p.polrelid)
                     = '(tenant_id = ( SELECT conveyor.current_tenant() AS current_tenant))')
         as has_policy
from pg_class as c
join pg_namespace as n on n.oid = c.relnamespace and n.nspname = 'conveyor'
where c.relkind in ('r', 'p')
  and (c.relrowsecurity or exists (select from pg_attribute as a
                                   where a.attrelid = c.oid and a.attname = 'tenant_id' and not a.attisdropped))
order by 1
"""


def tenant_tables(conn: Conn) -> list[str]:
    return [str(r["table_name"]) for r in conn.execute(TENANT_TABLES).fetchall()]


def seeded_tables(conn: Conn) -> list[str]:
    present = set(tenant_tables(conn))
    return [t for t in SEEDS if t in present]


def count(conn: Conn, table: str, where: str = "true") -> int:
    row = conn.execute(
        sql.SQL("select count(*) as n from conveyor.{} where ").format(sql.Identifier(table)) + sql.SQL(where)
    ).fetchone()
    assert row is not None
    return int(str(row["n"]))
