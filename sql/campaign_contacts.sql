-- The enrolled row as it is now (docs/campaigns.md#the-contact-at-each-step): each email,
-- sms or task step of a campaign re-reads it (the campaign step's `contact` op) into the
-- execution's vars.contact, which the campaign's templates and conditions read as
-- contact.*. So a skip_if sees a status changed since enrollment, a send goes to the
-- address the row has now, and a row deleted since ends the enrollment (stopped,
-- contact_deleted). The enrollment's trigger keeps the row as it was at enrollment.
create or replace function conveyor.campaign_contact(p_tenant_id text, p_entity text, p_id text)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_entity conveyor.entities;
  v_row jsonb;
begin
  select * into v_entity from conveyor.entities as e where e.entity = p_entity;
  if not found then
    raise exception using errcode = 'P0002',
      message = format('campaign audience "%s" is not a registered entity any more', p_entity);
  end if;
  execute format('select to_jsonb(t) from %s as t where t.%I = $1 and t.%I::text = $2', v_entity.table_name,
    v_entity.tenant_column, v_entity.id_column) into v_row using p_tenant_id, p_id;
  return v_row;
end;
$$;

revoke all on function conveyor.campaign_contact(text, text, text) from public;
