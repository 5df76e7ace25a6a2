-- Replaying an event (`conveyor events replay`): a copy of one of the tenant's events,
-- emitted anew so the workflows it triggers run again.

-- Emits a copy of p_event_id (an event of p_tenant_id): its type, payload, entity and
-- source, through conveyor.emit (so run-once settings, budgets and limits apply as to
-- any event), without its dedupe key. Returns the new event's id. For applications too
-- (checks the tenant: another tenant's event is "does not exist").
create or replace function conveyor.replay_event(p_tenant_id text, p_event_id bigint)
returns bigint
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_event conveyor.events;
begin
  perform conveyor.require_tenant(p_tenant_id);
  v_event := conveyor.tenant_event(p_tenant_id, p_event_id);
  return conveyor.emit(
    p_tenant_id, v_event.event_type, v_event.payload, v_event.entity_type, v_event.entity_id, null, v_event.source
  );
end;
$$;
