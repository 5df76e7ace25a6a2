-- Fair sharing between tenants (docs/queue.md, "Fairness between tenants"): the claim of
-- pending events dispatch takes (conveyor.claim_events) and the round the runners' read
-- shares with it (conveyor.fair_round; conveyor.read_actions, sql/actions.sql).

-- One round of a fair claim (conveyor.claim_events, conveyor.read_actions): each of
-- p_tenants (those waiting longest first, each after its p_after) takes up to `share` of
-- the p_left places left. Equal shares that never add up to more than p_left: with fewer
-- places than tenants, one each for the first p_left tenants.
create or replace function conveyor.fair_round(
  p_left integer,
  p_tenants text[],
  p_after bigint[],
  out tenants text[],
  out after bigint[],
  out share integer
)
language plpgsql
immutable
set search_path = ''
as $$
begin
  tenants := p_tenants;
  after := p_after;
  if p_left < pg_catalog.cardinality(p_tenants) then
    tenants := p_tenants[1:p_left];
    after := p_after[1:p_left];
  end if;
  share := p_left / pg_catalog.cardinality(tenants);
end;
$$;

-- Claims up to p_limit pending events, shared fairly between the tenants that have some
-- (round-robin, equal shares: docs/queue.md "Fairness"). The tenants with pending events
-- are found by a skip scan of events_pending_tenant_idx (one probe per tenant, at most
-- conveyor.max_dispatch_tenants of them), those whose oldest event is oldest first. Each
-- takes up to an equal share of the batch, its oldest events first (with more tenants
-- than places, one each for those waiting longest), and what a tenant leaves unused is
-- shared again between those that had more, at most 8 rounds. A tenant's own events are
-- claimed in order; one tenant's burst of 50,000 costs another tenant's event one batch
-- at most. With one tenant pending it is one round: its oldest p_limit events.
create or replace function conveyor.claim_events(p_limit integer)
returns table (event_id bigint, tenant_id text, depth integer)
language plpgsql
set search_path = ''
set jit = off
as $$
#variable_conflict use_column
declare
  v_tenants text[];
  v_after bigint[];
  v_left integer := greatest(coalesce(p_limit, 0), 0);
  v_share integer;
  v_served integer;
  v_held_back integer := 0;
  v_round integer := 0;
  v_ids bigint[];
  v_ids_tenants text[];
  v_depths integer[];
  v_max_tenants integer := conveyor.limit_setting('max_dispatch_tenants', 10000)::integer;
begin
  with recursive t (tenant_id, first_id, n) as (
    (
      select e.tenant_id, e.event_id, 1
      from conveyor.events as e
      where e.dispatched_at is null
      order by e.tenant_id, e.event_id
      limit 1
    )
    union all
    select nx.tenant_id, nx.event_id, t.n + 1
    from t
    cross join lateral (
      select e.tenant_id, e.event_id
      from conveyor.events as e
      where e.dispatched_at is null and e.tenant_id > t.tenant_id
      order by e.tenant_id, e.event_id
      limit 1
    ) as nx
    where t.n < v_max_tenants
  )
  select array_agg(w.tenant_id order by w.first_id)
  into v_tenants
  from (select t.tenant_id, t.first_id from t order by t.first_id limit v_left) as w;

  -- With several tenants waiting, the first round shares only a quarter of p_limit (at
  -- least a place each): when it serves a tenant completely (a quiet one behind another's
  -- burst) the batch ends there, so the transaction carrying its event is short and commits
  -- soon; under a burst's load that transaction's length is what the quiet event waits.
  -- The listener goes on after a batch of that size (CONTENDED_BATCH, runner/conveyor/queue.py).
  -- One tenant alone, or only busy ones, get the whole batch.
  if pg_catalog.cardinality(v_tenants) > 1 then
    v_held_back := v_left - greatest(pg_catalog.cardinality(v_tenants), v_left / 4);
    v_left := v_left - v_held_back;
  end if;

  while v_left > 0 and coalesce(pg_catalog.cardinality(v_tenants), 0) > 0 and v_round < 8 loop
    v_round := v_round + 1;
    select r.tenants, r.after, r.share into v_tenants, v_after, v_share
    from conveyor.fair_round(v_left, v_tenants, v_after) as r;
    v_served := pg_catalog.cardinality(v_tenants);
    -- the tenants that took their whole share may have more: the next round shares what
    -- this one left between them, after the last event each took
    with taken as (
      select c.event_id, c.tenant_id, c.depth
      from unnest(v_tenants, coalesce(v_after, array[]::bigint[])) as w (tenant_id, after_id)
      cross join lateral (
        select e.event_id, e.tenant_id, e.depth
        from conveyor.events as e
        -- as a row comparison in the index's order (tenant, event): with `event_id > x`
        -- the planner may walk the primary key past every other tenant's pending events
        where e.tenant_id = w.tenant_id and e.dispatched_at is null
          and (e.tenant_id, e.event_id) > (w.tenant_id, coalesce(w.after_id, 0))
        order by e.tenant_id, e.event_id
        limit v_share
        for update skip locked
      ) as c
    ),
    filled as (
      select tk.tenant_id, max(tk.event_id) as last_id
      from taken as tk
      group by tk.tenant_id
      having count(*) >= v_share
    )
    select
      array_agg(k.event_id), array_agg(k.tenant_id), array_agg(k.depth),
      (select array_agg(f.tenant_id order by f.tenant_id) from filled as f),
      (select array_agg(f.last_id order by f.tenant_id) from filled as f)
    into v_ids, v_ids_tenants, v_depths, v_tenants, v_after
    from taken as k;
    exit when v_ids is null;
    return query select * from unnest(v_ids, v_ids_tenants, v_depths);
    v_left := v_left - pg_catalog.cardinality(v_ids);
    -- Nobody served completely (every tenant had more than its share of the quarter): no
    -- quiet tenant rides in this batch, and the rest of p_limit is shared too.
    if v_round = 1 and coalesce(pg_catalog.cardinality(v_tenants), 0) = v_served then
      v_left := v_left + v_held_back;
    end if;
  end loop;
end;
$$;
