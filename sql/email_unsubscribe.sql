-- One-click unsubscribe (RFC 8058, docs/email-tracking.md#unsubscribe): a list_unsubscribe
-- email carries List-Unsubscribe: <https://.../u/<token>> with a random 256-bit token the
-- runner made, recorded with its message (conveyor.record_email_sent). `conveyor serve`
-- forwards POST /u/<token> here; GET shows a confirmation page and changes nothing (mail
-- scanners fetch links).

-- Unsubscribes the recipient of the message p_token names: records 'unsubscribed' (once:
-- a repeated POST changes nothing) and suppresses the address for list_unsubscribe steps.
-- Returns (status, body): 200 {"status": "unsubscribed" | "duplicate"}, 404 for an unknown token.
create or replace function conveyor.email_unsubscribe(p_token text, p_confirm boolean)
returns table (status integer, body jsonb)
language plpgsql
set search_path = ''
as $$
declare
  v_row conveyor.email_messages;
  v_result jsonb;
begin
  select m.* into v_row from conveyor.email_messages as m where m.unsubscribe_token = p_token;
  if v_row.id is null then
    return query select 404, jsonb_build_object('error', 'this unsubscribe link is not valid');
    return;
  end if;
  if not p_confirm then
    return query select 200, jsonb_build_object(
      'status', 'confirm', 'address', v_row.to_address, 'unsubscribed', v_row.unsubscribed_at is not null
    );
    return;
  end if;
  v_result := conveyor.record_email_event(
    v_row.tenant_id, v_row.message_id, 'unsubscribed', now(),
    jsonb_build_object('event_id', 'unsubscribe:' || v_row.id, 'method', 'one-click')
  );
  return query select 200, jsonb_build_object(
    'status', case v_result ->> 'outcome' when 'recorded' then 'unsubscribed' else 'duplicate' end,
    'address', v_row.to_address
  );
end;
$$;
