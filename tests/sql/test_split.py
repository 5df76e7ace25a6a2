"""The split step (sql/steps/split.sql): one weighted branch per execution, chosen by a
stable hash of workflow, step and subject (entity, else event, else the first execution
of a retry chain), recorded in the step's output; validated with a path per problem."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.sql.dispatch_helpers import emit
from tests.sql.interpreter_helpers import dry_run, execution, step_runs, visited
from tests.sql.workflow_documents import problems, publish, with_steps

Conn = psycopg.Connection[dict[str, Any]]

AB = [
    {"weight": 50, "goto": "a"},
    {"weight": 30, "goto": "b", "name": "variant_b"},
    {"weight": 20, "goto": None},
]


def ab_document(split: list[Any] | None = None, *, fail: bool = False, slug: str = "ab") -> dict[str, Any]:
    """A manual workflow: split into a, b or the end; a and b record where they went (or fail)."""
    failed = {"stop": {"status": "failed", "reason": "after the split"}}
    return {
        "slug": slug,
        "name": slug,
        "trigger": {"manual": True},
        "steps": [
            {"id": "ab", "split": split or AB},
            {"id": "a", **failed} if fail else {"id": "a", "set": {"went": "a"}, "next": None},
            {"id": "b", **failed} if fail else {"id": "b", "set": {"went": "b"}},
        ],
    }


def run(conn: Conn, slug: str = "ab", entity: str | None = None) -> int:
    row = conn.execute(
        "select conveyor.trigger_workflow('acme', %s, '{}', %s, %s) as id",
        (slug, "contact" if entity else None, entity),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def choice(conn: Conn, execution_id: int) -> dict[str, Any]:
    output = execution(conn, execution_id)["step_outputs"]["ab"]["output"]
    assert isinstance(output, dict)
    return output


def split_choose(
    conn: Conn, split: list[Any], workflow_id: int, step_id: str, subject: str
) -> dict[str, Any]:
    row = conn.execute(
        "select conveyor.split_choose(%s, %s, %s, %s) as c", (Jsonb(split), workflow_id, step_id, subject)
    ).fetchone()
    assert row is not None
    result = row["c"]
    assert isinstance(result, dict)
    return result


# --- validation ------------------------------------------------------------------------


def test_a_valid_split_publishes_with_a_route_per_branch(conn: Conn, tenant: str) -> None:
    assert problems(conn, ab_document()) == []
    workflow_id, version = publish(conn, tenant, ab_document())
    row = conn.execute(
        "select kind, branches from conveyor.workflow_steps where workflow_id = %s and version = %s and step_id = 'ab'",
        (workflow_id, version),
    ).fetchone()
    assert row == {"kind": "split", "branches": {"split[0]": "a", "split[1]": "b", "split[2]": None}}


def test_weights_gotos_and_names_are_checked_with_their_paths(conn: Conn) -> None:
    document = with_steps(
        {"id": "first", "set": {"x": 1}},
        {"id": "other", "set": {"y": 1}},
        {
            "id": "ab",
            "split": [
                {"weight": 50, "goto": "first"},
                {"weight": 0, "goto": "other"},
                {"weight": -1.5, "goto": "nowhere"},
                {"weight": "50", "goto": "first"},
                {"goto": "other", "share": 1},
                {"weight": True, "name": "t"},
                "half",
                {"weight": 10, "goto": None, "name": "Variant B"},
                {"weight": 10, "goto": None},
                {"weight": 10, "goto": None, "name": "end"},
                {"weight": 10, "goto": "first", "name": "other"},
            ],
        },
    )
    default_named = '; a branch without "name" is named by its goto: give it a "name"'
    assert problems(conn, document) == [
        "steps[2].split[1].weight: expected a positive number such as 50 or 12.5 (got 0)",
        "steps[2].split[2].weight: expected a positive number such as 50 or 12.5 (got -1.5)",
        'steps[2].split[2].goto: unknown step "nowhere"',
        'steps[2].split[3].weight: expected a positive number such as 50 or 12.5 (got "50")',
        f'steps[2].split[3]: duplicate branch name "first" (split[0] has it already){default_named}',
        "steps[2].split[4].weight: required key is missing",
        "steps[2].split[4].share: unknown key (expected one of: weight, goto, name)",
        f'steps[2].split[4]: duplicate branch name "other" (split[1] has it already){default_named}',
        "steps[2].split[5].goto: required key is missing",
        "steps[2].split[5].weight: expected a positive number such as 50 or 12.5 (got true)",
        'steps[2].split[6]: expected an object with "weight" and "goto" (got "half")',
        'steps[2].split[7].name: invalid branch name "Variant B" (lowercase letters, digits, _ and -, starting'
        " with a letter or digit)",
        'steps[2].split[9].name: duplicate branch name "end" (split[8] has it already)',
        'steps[2].split[10].name: duplicate branch name "other" (split[1] has it already)',
    ]


def test_an_empty_or_missing_list_and_foreign_keys_are_refused(conn: Conn) -> None:
    expected = (
        'steps[0].split: expected a non-empty array of {"weight": <positive number>, "goto": <step id or null>,'
        ' "name"?}'
    )
    for split in ([], None, {"weight": 1, "goto": None}, "50/50"):
        assert problems(conn, with_steps({"id": "ab", "split": split})) == [expected]
    assert problems(conn, with_steps({"id": "ab", "split": [{"weight": 1, "goto": None}], "next": "ab"})) == [
        'steps[0].next: unknown key for a "split" step (expected one of: id, split, on_error)'
    ]


def test_only_the_split_branches_make_steps_reachable(conn: Conn) -> None:
    # a split has no fall-through: the step after it is reached only as a branch's goto
    document = with_steps(
        {"id": "ab", "split": [{"weight": 1, "goto": "b"}, {"weight": 1.5, "goto": None}]},
        {"id": "a", "set": {"x": 1}},
        {"id": "b", "set": {"x": 2}},
    )
    assert problems(conn, document) == ['steps[1]: step "a" is unreachable from the first step "ab"']


# --- the hash ----------------------------------------------------------------------------


def test_the_bucket_is_md5_of_workflow_step_and_subject(conn: Conn) -> None:
    # the reference: the first 60 bits of md5("<workflow id>:<step id>:<subject>"), over 2^60
    for workflow_id, step_id, subject in [(1, "ab", "entity:contact:42"), (987654321, "x-y_z", "event:7")]:
        digest = hashlib.md5(f"{workflow_id}:{step_id}:{subject}".encode()).hexdigest()
        expected = Decimal(int(digest[:15], 16) * 10**18 // 2**60).scaleb(-18)
        row = conn.execute(
            "select conveyor.split_fraction(%s, %s, %s) as f", (workflow_id, step_id, subject)
        ).fetchone()
        assert row is not None and row["f"] == expected


def test_10000_entities_split_within_3_percent_of_the_weights(conn: Conn) -> None:
    for split in (
        AB,
        [{"weight": 1, "goto": "a"}, {"weight": 1, "goto": "b"}],
        [{"weight": 0.25, "goto": "a"}, {"weight": 0.7, "goto": "b"}, {"weight": 0.05, "goto": "c"}],
    ):
        rows = conn.execute(
            """select c ->> 'index' as idx, count(*) as n
               from generate_series(1, 10000) as i
               cross join lateral conveyor.split_choose(%s, 17, 'ab', 'entity:contact:' || i) as c
               group by 1""",
            (Jsonb(split),),
        ).fetchall()
        total = sum(float(b["weight"]) for b in split)
        counts = {int(r["idx"]): int(r["n"]) for r in rows}
        assert sum(counts.values()) == 10000
        for index, branch in enumerate(split):
            share = counts.get(index, 0) / 10000
            assert abs(share - float(branch["weight"]) / total) <= 0.03, (split, counts)


# --- running -----------------------------------------------------------------------------


def test_the_output_records_the_choice(conn: Conn, tenant: str) -> None:
    workflow_id, _ = publish(conn, tenant, ab_document())
    execution_id = run(conn, entity="42")
    output = choice(conn, execution_id)
    expected = split_choose(conn, AB, workflow_id, "ab", "entity:contact:42")
    assert output == expected
    assert set(output) == {"branch", "index", "name", "goto", "weight", "total", "bucket", "range", "subject"}
    index = output["index"]
    assert output["branch"] == f"split[{index}]"
    assert output["name"] == ["a", "variant_b", "end"][index]
    assert output["goto"] == AB[index]["goto"] and output["weight"] == AB[index]["weight"]
    assert output["total"] == 100 and output["subject"] == "entity:contact:42"
    low, high = output["range"]
    assert low <= output["bucket"] < high and high - low == output["weight"]
    # the step run records the weights it chose among and where it went
    run_row = step_runs(conn, execution_id)[0]
    assert run_row["input"] == AB and run_row["next_step"] == AB[index]["goto"]


def test_each_branch_goes_to_its_step_and_goto_null_ends(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ab_document())
    seen: set[str] = set()
    for entity in (str(i) for i in range(40)):
        execution_id = run(conn, entity=entity)
        output = choice(conn, execution_id)
        expected_path = {"a": ["ab", "a"], "variant_b": ["ab", "b"], "end": ["ab"]}[output["name"]]
        assert visited(conn, execution_id) == expected_path
        row = execution(conn, execution_id)
        assert row["status"] == "completed"
        assert row["vars"] == ({} if output["name"] == "end" else {"went": expected_path[-1]})
        seen.add(output["name"])
    assert seen == {"a", "variant_b", "end"}


def test_the_same_entity_takes_the_same_branch_in_every_execution(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ab_document())
    for entity in ("1", "2", "3", "4", "5", "6"):
        outputs = [choice(conn, run(conn, entity=entity)) for _ in range(3)]
        assert outputs[0] == outputs[1] == outputs[2]
    # another step id (or workflow) hashes the same entity anew: the splits are independent
    publish(conn, tenant, ab_document(slug="cd"))
    other = [choice(conn, run(conn, "cd", entity=str(i)))["bucket"] for i in range(6)]
    assert other != [choice(conn, run(conn, entity=str(i)))["bucket"] for i in range(6)]


def test_a_retry_takes_the_branch_its_original_took(conn: Conn, tenant: str) -> None:
    publish(conn, tenant, ab_document([{"weight": 1, "goto": "a"}, {"weight": 1, "goto": "b"}], fail=True))
    for entity in ("7", None):
        original = run(conn, entity=entity)
        assert execution(conn, original)["status"] == "failed"
        retried = original
        for _ in range(2):  # a retry of the retry too: the chain's first execution is the subject
            row = conn.execute(
                "select conveyor.retry_execution('acme', %s, true) as id", (retried,)
            ).fetchone()
            assert row is not None
            retried = int(row["id"])
            assert visited(conn, retried)[0] == "ab"
            assert choice(conn, retried) == choice(conn, original)
        assert choice(conn, original)["subject"] == (
            "entity:contact:7" if entity else f"execution:{original}"
        )


def test_without_an_entity_the_trigger_event_is_the_subject(conn: Conn, tenant: str) -> None:
    document = ab_document() | {"trigger": {"event": "crm.thing.happened"}}
    publish(conn, tenant, document)
    event_id = emit(conn, tenant, "crm.thing.happened")
    conn.execute("select conveyor.dispatch()")
    row = conn.execute(
        "select execution_id from conveyor.executions where event_id = %s", (event_id,)
    ).fetchone()
    assert row is not None
    assert choice(conn, int(row["execution_id"]))["subject"] == f"event:{event_id}"


def test_a_thousand_executions_through_the_interpreter_follow_the_hash(conn: Conn, tenant: str) -> None:
    # end to end: one batch of executions, each chooses what split_choose says for it
    workflow_id, version = publish(conn, tenant, ab_document())
    conn.execute(
        """insert into conveyor.executions (tenant_id, workflow_id, version, entity_type, entity_id, current_step)
           select 'acme', %s, %s, 'contact', i::text, 'ab' from generate_series(1, 1000) as i""",
        (workflow_id, version),
    )
    conn.execute(
        "select conveyor.run_executions(array(select execution_id from conveyor.executions where workflow_id = %s))",
        (workflow_id,),
    )
    rows = conn.execute(
        """select e.step_outputs -> 'ab' -> 'output' as got,
             conveyor.split_choose(%s, e.workflow_id, 'ab', 'entity:contact:' || e.entity_id) as expected,
             e.status
           from conveyor.executions as e where e.workflow_id = %s""",
        (Jsonb(AB), workflow_id),
    ).fetchall()
    assert len(rows) == 1000
    assert all(r["got"] == r["expected"] and r["status"] == "completed" for r in rows)
    shares = {name: sum(r["got"]["name"] == name for r in rows) / 1000 for name in ("a", "variant_b", "end")}
    # 1,000 draws: within 5 points (about 3.5 standard deviations of the smallest share)
    assert (
        abs(shares["a"] - 0.5) < 0.05
        and abs(shares["variant_b"] - 0.3) < 0.05
        and abs(shares["end"] - 0.2) < 0.05
    )


def test_a_dry_run_says_which_branch_and_why(conn: Conn, tenant: str) -> None:
    result = dry_run(conn, ab_document(), {"entity_type": "contact", "entity_id": "42"})
    step = result["steps"][0]
    output = step["output"]
    assert step["kind"] == "split" and step["next"] == output["goto"]
    target = f'step "{output["goto"]}"' if output["goto"] else "the end"
    low, high = output["range"]
    decision = re.fullmatch(
        rf'{re.escape(output["branch"])} "{output["name"]}" → {re.escape(target)}: bucket ([0-9.]+) of 100 falls'
        rf" in \[{low}, {high}\) \(weight {output['weight']}\), hashed from entity:contact:42",
        step["decision"],
    )
    assert decision is not None, step["decision"]
    # (the output's JSON number reaches Python as a float)
    assert float(decision[1]) == output["bucket"]


VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 100),
    st.floats(-1, 100, allow_nan=False),
    st.sampled_from(["a", "", "A b"]),
)
# mostly well-formed branches (positive weights, gotos a / b / end, names), some not
GOOD_BRANCH = st.fixed_dictionaries(
    {
        "weight": st.one_of(
            st.integers(1, 1000), st.floats(1e-6, 1e6), st.decimals("0.001", "99.999", places=3)
        ),
        "goto": st.sampled_from(["a", "b", None]),
    },
    optional={"name": st.sampled_from(["a", "b", "end", "variant_c", "d-1"])},
).map(lambda b: b | {"weight": float(b["weight"])} if not isinstance(b["weight"], int) else b)
BRANCHES = st.one_of(
    st.lists(GOOD_BRANCH, min_size=1, max_size=4, unique_by=lambda b: b.get("name", b["goto"] or "end")),
    st.lists(
        st.one_of(GOOD_BRANCH, st.dictionaries(st.sampled_from(["weight", "goto", "name", "x"]), VALUES)),
        max_size=4,
    ),
    VALUES,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=BRANCHES)
def test_what_validation_accepts_runs_and_takes_one_of_its_branches(
    conn: Conn, tenant: str, split: Any
) -> None:
    # (a and b stay reachable whatever the split names: by its on_error, then a's next)
    document = ab_document() | {"slug": "p"}
    document["steps"][:2] = [
        {"id": "ab", "split": split, "on_error": {"goto": "a"}},
        {"id": "a", "set": {"went": "a"}, "next": "b"},
    ]
    if problems(conn, document):
        event("refused")
        return
    event("accepted")
    publish(conn, tenant, document)
    output = choice(conn, run(conn, "p", entity="42"))
    assert output["goto"] == split[output["index"]]["goto"]
    assert output["name"] == split[output["index"]].get("name", split[output["index"]]["goto"] or "end")


def test_a_split_inside_a_parallel_branch_routes_within_its_list(conn: Conn, tenant: str) -> None:
    body = [
        {"id": "ab", "split": [{"weight": 1, "goto": "a"}, {"weight": 1, "goto": "b"}]},
        {"id": "a", "set": {"went": "a"}, "next": None},
        {"id": "b", "set": {"went": "b"}},
    ]
    document = ab_document() | {"slug": "fan"}
    document["steps"] = [
        {"id": "both", "parallel": {"branches": {"x": body}}},
        {"id": "after", "set": {"done": 1}},
    ]
    assert problems(conn, document) == []
    outside = dict(document, steps=[{"id": "both", "parallel": {"branches": {"x": body[:1]}}}])
    assert problems(conn, outside) == [
        'steps[0].parallel.branches.x[0].split[0].goto: unknown step "a"',
        'steps[0].parallel.branches.x[0].split[1].goto: unknown step "b"',
    ]
    publish(conn, tenant, document)
    parent = run(conn, "fan", entity="42")
    row = execution(conn, parent)
    assert row["status"] == "completed"
    branch = row["step_outputs"]["both"]["output"]["branches"]["x"]
    chosen = branch["steps"]["ab"]["output"]
    assert chosen["subject"] == "entity:contact:42"
    assert branch["steps"][chosen["goto"]]["output"] == {"went": chosen["goto"]}
