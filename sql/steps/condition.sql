-- The condition step: {"id", "if": <condition>, "then"?, "else"?}. The condition language
-- is sql/conditions.sql; an omitted branch falls through to the next step in document order.

create or replace function conveyor.step_condition_errors(p_step jsonb, p_path text, p_step_ids jsonb)
returns setof text
language sql
stable
set search_path = ''
as $$
  select c.message from conveyor.document_condition_errors(p_step -> 'if', p_path || '.if', p_step_ids) as c (message);
$$;
