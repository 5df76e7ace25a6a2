-- Tenants' regular expressions (the `matches` condition operator, sql/conditions.sql):
-- what a pattern may be and how long a text it is applied to, so that matching is bounded
-- (docs/limits.md, "Expressions"). Checked at publish (regex_error) and at run time
-- (regex_check, for a pattern a template produced).

-- The longest text `matches` applies a pattern to, in characters (setting
-- conveyor.max_regex_subject, default 10000), and the longest pattern (setting
-- conveyor.max_regex_pattern, default 1000). See docs/limits.md for what they bound.
-- (plpgsql: a SQL function called from plpgsql is planned again in every transaction)
create or replace function conveyor.max_regex_subject() returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('conveyor.max_regex_subject', true), '')::integer, 10000);
end;
$$;

create or replace function conveyor.max_regex_pattern() returns integer
language plpgsql
stable
parallel safe
set search_path = ''
as $$
begin
  return coalesce(nullif(pg_catalog.current_setting('conveyor.max_regex_pattern', true), '')::integer, 1000);
end;
$$;

-- A pattern's size with its bounded repetitions expanded, as PostgreSQL's compiler
-- expands them into automaton states: each atom (a character, an escape, a bracket
-- expression) counts 1, `x{m,n}` counts x n times (m + 1 for `{m,}`), nested bounds
-- multiply. Matching costs time proportional to the text's length times this size (at
-- worst: the automaton's state cache missing at every character), so it is what the
-- pattern limit bounds. An estimate that errs high (it counts `(?:` groups' contents like
-- any other); an unbalanced pattern does not compile anyway.
create or replace function conveyor.regex_size(p_pattern text) returns bigint
language plpgsql
immutable
strict
parallel safe
set search_path = ''
as $$
declare
  -- what is being summed at each open group (1: the whole pattern), and the size of the
  -- last atom or group: what a following bound repeats
  v_sums bigint[] := array[0];
  v_depth integer := 1;
  v_last bigint := 0;
  v_token text;
  v_bound text[];
  v_times bigint;
begin
  for v_token in
    select m[1]
    from pg_catalog.regexp_matches(
      p_pattern, '(\\.|\[\^?\]?(?:\[[:.=][^]]*[:.=]\]|[^]])*\]|\{[0-9]+(?:,[0-9]*)?\}|\(\?[:=!<]*|.)', 'g'
    ) as m
  loop
    if pg_catalog.left(v_token, 1) = '{' then
      v_bound := pg_catalog.regexp_match(v_token, '^\{([0-9]+)(,([0-9]*))?\}$');
      v_times := case
        when v_bound[2] is null then v_bound[1]::bigint
        when v_bound[3] = '' then v_bound[1]::bigint + 1
        else greatest(v_bound[1]::bigint, v_bound[3]::bigint)
      end;
      v_sums[v_depth] := least(v_sums[v_depth] + v_last * (v_times - 1), 1000000000);
      v_last := least(v_last * v_times, 1000000000);
    elsif pg_catalog.left(v_token, 1) = '(' then
      v_depth := v_depth + 1;
      v_sums[v_depth] := 0;
      v_last := 0;
    elsif v_token = ')' and v_depth > 1 then
      v_last := v_sums[v_depth];
      v_depth := v_depth - 1;
      v_sums[v_depth] := least(v_sums[v_depth] + v_last, 1000000000);
    elsif v_token in ('*', '+', '?', '|', '^', '$') then
      if v_token = '|' then
        v_last := 0;
      end if;
    else
      v_last := 1;
      v_sums[v_depth] := v_sums[v_depth] + 1;
    end if;
  end loop;
  -- groups left open count too
  return (select pg_catalog.sum(x)::bigint from pg_catalog.unnest(v_sums[1:v_depth]) as x);
end;
$$;

-- Why a tenant's regular expression is refused, or null. Back-references (\1 .. \9) make
-- matching exponential in the text (PostgreSQL supports no named ones, \k<...>), and
-- lookahead / lookbehind constraints polynomial or worse (a nested lookahead took over a
-- minute on 1,000 characters); without them the engine runs a DFA over the text once.
-- Recognised by their syntax, escaped backslashes aside: one inside a bracket expression
-- ([(?=]) is refused as well, which costs nothing real. p_expanded false skips the size
-- check (regex_size, a scan of the pattern) where a pattern was checked at publish.
drop function if exists conveyor.regex_refusal(text);
create or replace function conveyor.regex_refusal(p_pattern text, p_expanded boolean default true) returns text
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  -- conveyor.max_regex_pattern(), inlined: this runs for every `matches`
  v_max integer := coalesce(nullif(pg_catalog.current_setting('conveyor.max_regex_pattern', true), '')::integer, 1000);
begin
  if pg_catalog.length(p_pattern) > v_max then
    return pg_catalog.format(
      'the pattern is %s characters, over the limit of %s (setting conveyor.max_regex_pattern)',
      pg_catalog.length(p_pattern), v_max
    );
  end if;
  if p_expanded and pg_catalog.strpos(p_pattern, '{') > 0 and conveyor.regex_size(p_pattern) > v_max then
    return pg_catalog.format(
      'the pattern expands to %s states with its repetition bounds ({n}), over the limit of %s '
      || '(setting conveyor.max_regex_pattern)',
      conveyor.regex_size(p_pattern), v_max
    );
  end if;
  if pg_catalog.strpos(p_pattern, '\') > 0 and p_pattern ~ '(^|[^\\])(\\\\)*\\[1-9]' then
    return 'back-references (\1 .. \9) are not allowed: they can take time exponential in the text';
  end if;
  if pg_catalog.strpos(p_pattern, '(?') > 0 and p_pattern ~ '(^|[^\\])(\\\\)*\(\?<?[=!]' then
    return 'lookahead and lookbehind constraints ((?= (?! (?<= (?<!) are not allowed: '
      || 'they can take time polynomial or worse in the text';
  end if;
  return null;
end;
$$;

-- A pattern as an error message shows it: JSON, its first 60 characters when longer.
create or replace function conveyor.regex_shown(p_pattern text) returns text
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
  select case
    when pg_catalog.length(p_pattern) <= 60 then pg_catalog.to_jsonb(p_pattern)::text
    else pg_catalog.to_jsonb(pg_catalog.left(p_pattern, 60))::text || '...'
  end;
$$;

-- Raises 2201B for a pattern regex_refusal refuses (at run time: see condition_compare).
create or replace function conveyor.regex_check(p_pattern text, p_expanded boolean) returns void
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_refusal text := conveyor.regex_refusal(p_pattern, p_expanded);
begin
  if v_refusal is not null then
    raise exception using errcode = '2201B',
      message = pg_catalog.format(
        'condition.value: regular expression %s refused: %s', conveyor.regex_shown(p_pattern), v_refusal
      );
  end if;
end;
$$;

-- Whether a POSIX regular expression is allowed (regex_refusal) and compiles: null when
-- it does, else what is wrong.
create or replace function conveyor.regex_error(p_pattern text) returns text
language plpgsql
stable
parallel safe
set search_path = ''
as $$
declare
  v_refusal text := conveyor.regex_refusal(p_pattern);
begin
  if v_refusal is not null then
    return v_refusal;
  end if;
  perform '' ~ p_pattern;
  return null;
exception when invalid_regular_expression then
  return sqlerrm;
end;
$$;
