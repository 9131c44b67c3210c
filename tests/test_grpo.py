"""GRPO through the environment: the TRL adapter (tools, reset, exact reward, isolation) and a short real run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from transformers.utils import get_json_schema

from evals.default_model import byte_tokenizer
from itl_env import dialogs
from itl_env.env import ToolUseEnv, fact_registry
from itl_env.formats import ToolCall, get_format
from itl_env.oracle import OraclePolicy
from itl_env.trl_adapter import EpisodeError, adapter_class, answered, environment_factory, grpo_dataset
from itl_env.world import World
from tools.registry import ToolRegistry, tool
from trainers import grpo


def public_methods(instance: object) -> set[str]:
    """What TRL exposes: the class's public functions (trl 1.16 lists them with inspect.getmembers)."""
    return {name for name, _ in inspect.getmembers(type(instance), inspect.isfunction) if not name.startswith("_")}


def registry_with_new_tool(world) -> ToolRegistry:
    registry = fact_registry(world)

    @tool
    def people_born_in(country: str, limit: int = 3) -> list[str]:
        """List people born in a country.

        Args:
            country: The country, e.g. "Japan".
            limit: At most this many names.
        """
        return [row["name"] for row in world.rows if row["birth_place"] == country][:limit]

    registry.register(people_born_in)
    return registry


def oracle_answer(world, fact, variant: int) -> str:
    """The oracle's final message for ``fact``, after its lookup call was answered by the environment."""
    env = ToolUseEnv(world)
    question, _ = env.reset(options={"fact": fact, "variant": variant})
    oracle = OraclePolicy(world)
    env.step(oracle.reply(env.messages))
    return oracle.reply(env.messages)


def env_reward(world, fact, variant: int, answer: str) -> float:
    """What ToolUseEnv itself pays for ``answer`` as the episode's final message."""
    env = ToolUseEnv(world)
    env.reset(options={"fact": fact, "variant": variant})
    _, reward, terminated, _, _ = env.step(answer)
    assert terminated
    return reward


def test_adapter_methods_are_the_registry_tools(shared_world):
    environment = environment_factory(shared_world)()
    registry = fact_registry(shared_world)
    assert public_methods(environment) == {"reset", "get_reward", *registry.names}
    for name in registry.names:
        assert get_json_schema(getattr(environment, name)) == registry[name].json_schema


def test_newly_registered_tool_appears_with_its_schema_and_results(shared_world):
    registry = registry_with_new_tool(shared_world)
    environment = environment_factory(shared_world, registry=registry)()
    assert public_methods(environment) == {"reset", "get_reward", "lookup", "people_born_in"}
    assert get_json_schema(environment.people_born_in) == registry["people_born_in"].json_schema
    environment.reset(fact_id=shared_world.facts()[0].id)
    country = shared_world.rows[0]["birth_place"]
    got = environment.people_born_in(country=country, limit=2)
    assert got == registry.call("people_born_in", {"country": country, "limit": 2}).content
    assert shared_world.rows[0]["name"] in json.loads(got)
    bad = environment.people_born_in(limit="many")  # missing and ill-typed arguments: the registry's own error text
    assert bad == registry.call("people_born_in", {"limit": "many"}).content
    assert "invalid arguments for people_born_in" in bad
    assert [r["ok"] for r in environment.tool_results] == [True, False]


def test_in_weight_environment_offers_no_tools(shared_world):
    assert public_methods(environment_factory(shared_world, offer_tools=False)()) == {"reset", "get_reward"}


@pytest.mark.parametrize("name", ["reset", "get_reward", "fact"])
def test_tool_names_that_clash_with_the_adapter_are_refused(name):
    def clash(x: int) -> int:
        """Clash.

        Args:
            x: A number.
        """
        return x

    with pytest.raises(ValueError, match="clash"):
        adapter_class(ToolRegistry([tool(clash, name=name)]))


def test_reset_returns_the_rows_question_the_same_for_every_generation(shared_world):
    facts = shared_world.facts()[:5]
    rows = list(grpo_dataset(facts, seed=3))
    make = environment_factory(shared_world)
    for fact, row in zip(facts, rows, strict=True):
        first, second = make(), make()  # two generations of one group: TRL gives both the same row
        question = first.reset(**row)
        assert question == dialogs.question(fact.person, fact.attribute, row["variant"])
        assert second.reset(**row) == question
        assert row["prompt"] == [{"role": "user", "content": ""}]  # TRL appends the question to it
    assert len({row["variant"] for row in grpo_dataset(shared_world.facts(), seed=3)}) > 1  # phrasings vary


def test_reset_rejects_a_prompt_that_already_asks(shared_world):
    row = grpo_dataset(shared_world.facts()[:1])[0]
    row["prompt"] = [{"role": "user", "content": "When was X born?"}]
    with pytest.raises(ValueError, match="empty user message"):
        environment_factory(shared_world)().reset(**row)


def test_get_reward_is_the_environments_exact_score(shared_world):
    facts = shared_world.facts()
    make = environment_factory(shared_world)
    for fact in facts[:8]:
        other = next(f for f in facts if f.attribute == fact.attribute and f.value != fact.value)
        for answer, expected in (
            (oracle_answer(shared_world, fact, 1), 1.0),
            (dialogs.answer(fact.person, fact.attribute, other.value), 0.0),  # a wrong value
            (f"{fact.value} or {other.value}", 0.0),  # hedging scores 0
        ):
            environment = make()
            environment.reset(fact_id=fact.id, variant=1)
            assert answered([[{"role": "assistant", "content": answer}]], [environment]) == [1.0]
            assert environment.get_reward() == expected == env_reward(shared_world, fact, 1, answer)


def test_rollout_cut_off_in_a_tool_call_scores_zero(shared_world):
    fact = shared_world.facts()[0]
    environment = environment_factory(shared_world)()
    environment.reset(fact_id=fact.id)
    call = {"type": "function", "function": {"name": "lookup", "arguments": {"name": fact.person}}}
    completion = [{"role": "assistant", "content": fact.value, "tool_calls": [call]}]
    assert answered([completion], [environment]) == [0.0]
    assert environment.get_reward() == 0.0


def test_get_reward_needs_the_answer_handed_over(shared_world):
    environment = environment_factory(shared_world)()
    environment.reset(fact_id=shared_world.facts()[0].id)
    with pytest.raises(EpisodeError, match="answered"):
        environment.get_reward()


def test_rollout_state_is_isolated(shared_world):
    first_fact, second_fact = shared_world.facts()[0], shared_world.facts()[5]
    make = environment_factory(shared_world)
    first, second = make(), make()
    first.reset(fact_id=first_fact.id)
    second.reset(fact_id=second_fact.id)
    assert first.lookup(name=first_fact.person, attribute=first_fact.attribute.value) == first_fact.value
    assert first.lookup(name="Nobody Anywhere", attribute="occupation").startswith("no person named")
    assert second.tool_results == [] and second.fact == second_fact
    metrics: dict[str, float] = {}
    rewards = answered(
        [[{"role": "assistant", "content": oracle_answer(shared_world, f, 0)}] for f in (first_fact, second_fact)],
        [first, second],
        log_metric=metrics.__setitem__,
    )
    assert rewards == [1.0, 1.0] and (first.get_reward(), second.get_reward()) == (1.0, 1.0)
    assert metrics == {"tools/error_frequency": 0.5}  # one of the two executed calls failed
    first.reset(fact_id=second_fact.id)  # reused from TRL's pool: a clean episode
    assert first.tool_results == [] and first.fact == second_fact
    with pytest.raises(EpisodeError):
        first.get_reward()


def test_trl_reads_the_templates_tool_call_and_runs_it_in_the_environment(shared_world):
    """Model text -> TRL's parse_response (our response_template) -> adapter method -> the environment's result."""
    from trl.chat_template_utils import parse_response

    tokenizer = byte_tokenizer()
    fact = shared_world.facts()[3]
    environment = environment_factory(shared_world)()
    question = environment.reset(fact_id=fact.id)
    tools = [environment.lookup]
    prompt_ids = tokenizer.apply_chat_template(  # as TRL's GRPOTrainer asks for it: a plain list of ids
        [{"role": "user", "content": question}],
        tools=tools,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    call = ToolCall(name="lookup", arguments={"name": fact.person, "attribute": fact.attribute.value})
    text = get_format("hermes").render([call]) + tokenizer.eos_token
    parsed = parse_response(tokenizer, tokenizer(text, add_special_tokens=False)["input_ids"], prefix=prompt_ids)
    (tool_call,) = parsed["tool_calls"]
    function = tool_call["function"]
    assert getattr(environment, function["name"])(**function["arguments"]) == fact.value


TINY = ["--hidden_size", "32", "--layers", "1", "--people", "12", "--unseen_people", "4", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "2", "--max_completion_length", "64",
        "--eval_every", "0", "--final_eval_facts", "4", "--max_new_tokens", "16", "--logging_steps", "1",
        "--save_steps", "2"]  # fmt: skip


def test_grpo_smoke_run_writes_its_run_dir(tmp_path):
    script, training = grpo.parse([*TINY, "--world", str(tmp_path / "w.db"), "--output_dir", str(tmp_path / "run")])
    result = grpo.main(script, training)
    out = Path(result.run_dir)
    assert result.steps == 2 and not result.interrupted
    assert result.initial_unseen_recall is not None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "reward" in row]
    assert len(logged) == 2
    for key in ("reward", "reward_std", "frac_reward_zero_std", "tools/call_frequency", "tools/failure_frequency"):
        assert key in logged[0]
    assert {"initial/unseen_recall", "final/unseen_recall"} <= set().union(*rows)
    config = (out / "config.yaml").read_text()
    assert "max_tool_calling_iterations: 2" in config
    started_from = json.loads((out / "run.json").read_text())
    assert (
        started_from["model"] == "default"
        and started_from["world"]["content_hash"] == World.open(tmp_path / "w.db").content_hash
    )
    assert (out / "summary.json").is_file() and (out / "model" / "config.json").is_file()
    assert sorted((out / "records").glob("*.jsonl"))


@pytest.mark.gpu
@pytest.mark.vllm
def test_grpo_smoke_run_with_vllm_colocated(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from evals.default_model import DefaultModelConfig, save

    model = save(tmp_path / "model", DefaultModelConfig(hidden_size=64, layers=1, heads=2, intermediate_size=192))
    args = [*TINY, "--model", str(model), "--world", str(tmp_path / "w.db"), "--output_dir", str(tmp_path / "run")]
    args += ["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.2"]
    result = grpo.main(*grpo.parse(args))
    assert result.steps == 2 and (Path(result.run_dir) / "model" / "config.json").is_file()


def test_cli_rejects_unknown_keys_and_contradictory_bounds(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("max_steps: 2\nnum_generation: 4\n")
    with pytest.raises(SystemExit):
        grpo.parse(["--config", str(config)])
    assert "num_generation" in capsys.readouterr().err
    script, training = grpo.parse(["--max_turns", "3", "--max_tool_calling_iterations", "5"])
    with pytest.raises(ValueError, match="max_turns"):
        grpo.main(script, training)
    with pytest.raises(SystemExit):
        grpo.parse(["--mode", "in_memory"])
    script, training = grpo.parse(["--use_vllm", "true"])
    with pytest.raises(ValueError, match="model directory"):
        grpo.main(script, training)


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        grpo.parse(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--max_turns", "--train_facts", "--initial_eval", "--num_generations", "--use_vllm"):
        assert option in text
