"""The retention policy as a YAML file, validated before the worker starts.

The file says which rule fires which action for which customers, and the guard rails
every action must pass (:mod:`streams.domain.guards`). The format, every key with its
type and default, is in ``docs/policy.md``; ``deploy/policy.yaml`` is the default and
gives exactly today's built-in rule (:class:`streams.domain.policy.PolicyConfig`).

An invalid file is refused whole, with every problem found, each naming the file, the
line and what is wrong, so an operator can fix it without reading this code:

>>> load_policy_text("version: 1\\nrules: []\\nguards: {daily_budget: {count: -5}}\\n", "p.yaml")
Traceback (most recent call last):
...
streams.domain.policy_file.PolicyFileError: p.yaml: 1 problem
  p.yaml:3: guards.daily_budget.count: must be >= 0, got -5

Line numbers come from the YAML node marks (``yaml.compose``), so a problem is reported
where it is written, also for duplicate keys (which plain YAML loading silently drops).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from streams.domain.actions import ActionKind, ControlBy
from streams.domain.lifecycle import Stage
from streams.domain.loyalty import TIER_PATTERN
from streams.domain.policy import LAPSED_AFTER_STREAK, PolicyConfig

Trigger = Literal["lapse", "negative_review", "sweep", "abandoned_cart", "first_purchase"]
Priority = Literal["low", "normal", "high"]
ChooseBy = Literal["first", "bandit"]
Algorithm = Literal["linucb", "thompson", "epsilon_greedy"]
Target = Literal["risk", "uplift"]

ACTION_KINDS: tuple[str, ...] = get_args(ActionKind)
TRIGGERS: tuple[str, ...] = get_args(Trigger)
PRIORITIES: tuple[str, ...] = get_args(Priority)
CHOOSE_BY: tuple[str, ...] = get_args(ChooseBy)
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
TARGETS: tuple[str, ...] = get_args(Target)
#: The least exploration share of an uplift-targeted rule: without decisions made at random
#: whatever the prediction, the model would learn only from the customers it already favours.
MIN_EXPLORATION = 0.01
CONTROL_BY: tuple[str, ...] = get_args(ControlBy)
STAGES: tuple[str, ...] = tuple(s.value for s in Stage)
#: The section each action kind takes its parameters from.
ACTION_SECTION = {"coupon": "coupon", "recommendation": "recommendation", "care_outreach": "care"}


@dataclass(frozen=True)
class Lapse:
    """When a streak customer counts as lapsed, and how long the episode is checked
    (defaults: the built-in rule's, :class:`PolicyConfig`)."""

    min_purchases: int = PolicyConfig.streak_min_purchases
    min_days: float = PolicyConfig.lapse_min_days
    gap_factor: float = PolicyConfig.lapse_gap_factor
    recheck_days: float = PolicyConfig.recheck_days
    give_up_days: float = PolicyConfig.give_up_days


@dataclass(frozen=True)
class When:
    """Who a rule applies to; every condition given must hold (absent: no condition)."""

    stages: tuple[str, ...] | None = None
    churn_at_least: float | None = None
    churn_below: float | None = None
    min_purchases: int | None = None
    #: Loyalty tiers (names of RETENTION_LOYALTY_TIERS) the customer must be in.
    loyalty_tiers: tuple[str, ...] | None = None
    #: The customer's mean order value (spend / purchases, currency units) at least this.
    min_order_value: float | None = None

    @property
    def tiered(self) -> bool:
        """The rule picks customers by loyalty or value (a tier of an offer, not the base rule)."""
        return self.loyalty_tiers is not None or self.min_order_value is not None


@dataclass(frozen=True)
class Coupon:
    """Exactly one of ``percent`` and ``amount`` (with ``currency``)."""

    percent: float | None = None
    amount: float | None = None
    currency: str | None = None
    #: Largest value a percent coupon is budgeted at (currency units; None: no cap).
    max_value: float | None = None
    valid_days: float = PolicyConfig.coupon_ttl_days


@dataclass(frozen=True)
class Recommendation:
    items: int = 10
    valid_days: float = 7.0


@dataclass(frozen=True)
class Care:
    priority: Priority = "normal"
    topic: str | None = None
    valid_days: float = 3.0


@dataclass(frozen=True)
class UpliftTarget:
    """How an uplift-targeted rule picks among the customers its ``when`` lets through
    (``docs/uplift.md``): the predicted uplift at least ``threshold`` and/or among the top
    ``top_share`` of the rule's candidates; a share ``exploration`` of the candidates is
    decided whatever the prediction, so the model keeps learning."""

    threshold: float | None = None
    top_share: float | None = None
    exploration: float = 0.1


@dataclass(frozen=True)
class Rule:
    name: str
    trigger: Trigger
    action: ActionKind
    when: When = field(default_factory=When)
    coupon: Coupon | None = None
    recommendation: Recommendation | None = None
    care: Care | None = None
    #: Line of the rule in the file (for messages at run time).
    line: int = 0
    #: Whom the rule treats among those its ``when`` lets through: ``risk`` (all of them,
    #: the default) or ``uplift`` (those the uplift model picks, ``uplift``).
    target: Target = "risk"
    uplift: UpliftTarget | None = None


@dataclass(frozen=True)
class Reward:
    """What a matured treated decision chosen by a bandit is worth: ``conversion`` for a
    purchase in its attribution window, minus ``coupon_cost`` times the coupon's share off
    (percent / 100) when the coupon was redeemed."""

    conversion: float = 1.0
    coupon_cost: float = 0.0


@dataclass(frozen=True)
class Choose:
    """How the group of rules of one trigger and action kind is chosen among: ``first``
    (the first eligible rule in file order, the default of every group) or ``bandit`` (a
    contextual bandit among the eligible rules, learned by the trainer, ``docs/bandit.md``)."""

    trigger: Trigger
    action: ActionKind
    by: ChooseBy = "first"
    algorithm: Algorithm = "linucb"
    #: linucb: width of the confidence bonus (in posterior standard deviations); thompson:
    #: scale of the posterior draw; epsilon_greedy: the share of decisions explored (0 to 1).
    exploration: float = 1.0
    reward: Reward = field(default_factory=Reward)
    line: int = 0

    @property
    def key(self) -> str:
        """The bandit's name in the model snapshots: ``trigger/action``."""
        return f"{self.trigger}/{self.action}"


@dataclass(frozen=True)
class KindBudget:
    count: int | None = None
    #: Coupon value in currency units (coupons only).
    value: float | None = None


@dataclass(frozen=True)
class DailyBudget:
    """Whole-shop budgets per UTC day of event time (split across partitions, see guards)."""

    count: int = 10_000
    per_kind: dict[str, KindBudget] = field(default_factory=dict)


@dataclass(frozen=True)
class Guards:
    cooldown_days: dict[str, float] = field(
        default_factory=lambda: {"coupon": 30.0, "recommendation": 7.0, "care_outreach": 14.0}
    )
    checkout_window_minutes: float = 30.0
    daily_budget: DailyBudget = field(default_factory=DailyBudget)


@dataclass(frozen=True)
class Policy:
    version: int
    rules: tuple[Rule, ...]
    lapse: Lapse = field(default_factory=Lapse)
    guards: Guards = field(default_factory=Guards)
    control_share: float = 0.1
    #: ``customer``: one control group for all kinds; ``kind``: drawn per customer and kind.
    control_by: ControlBy = "customer"
    #: The groups of rules (trigger, action kind) not chosen by ``first``.
    choose: tuple[Choose, ...] = ()
    source: str = "<string>"

    def bandit_for(self, trigger: str, action: str) -> Choose | None:
        """The bandit that chooses among the rules of this trigger and kind (None: ``first``)."""
        return next((c for c in self.choose if c.by == "bandit" and c.trigger == trigger and c.action == action), None)

    @property
    def uplift_kinds(self) -> frozenset[str]:
        """The action kinds whose uplift the policy learns: those with an uplift-targeted rule
        (every decision of such a kind, of any rule, is an example for its model)."""
        return frozenset(r.action for r in self.rules if r.target == "uplift")

    def lapse_config(self) -> PolicyConfig:
        """Today's built-in rule as the file configures it: the first ``lapse`` coupon rule
        that picks customers by neither loyalty tier nor order value (the base offer; tiered
        offers come before it in the file, as the first matching rule fires).

        >>> load_policy(DEFAULT_POLICY).lapse_config() == PolicyConfig()
        True
        """
        rule = next((r for r in self.rules if r.trigger == "lapse" and r.action == "coupon" and not r.when.tiered), None)
        base = PolicyConfig()
        coupon = rule.coupon if rule is not None else None
        churn = rule.when.churn_at_least if rule is not None else None
        return PolicyConfig(
            streak_min_purchases=self.lapse.min_purchases,
            lapse_min_days=self.lapse.min_days,
            lapse_gap_factor=self.lapse.gap_factor,
            recheck_days=self.lapse.recheck_days,
            give_up_days=self.lapse.give_up_days,
            churn_threshold=churn if churn is not None else base.churn_threshold,
            coupon_percent=coupon.percent if coupon is not None and coupon.percent is not None else base.coupon_percent,
            coupon_ttl_days=coupon.valid_days if coupon is not None else base.coupon_ttl_days,
            control_share=self.control_share,
            control_by=self.control_by,
        )


    def check_tiers(self, tiers: tuple[str, ...]) -> None:
        """Refuse rules naming a loyalty tier the worker does not have (the tiers are the
        RETENTION_LOYALTY_TIERS setting, so this check runs where both are known).

        >>> p = load_policy_text("version: 1\\nrules:\\n- {name: r, trigger: sweep, action: care_outreach, care: {}, when: {loyalty_tiers: [gold, gould]}}\\n", "p.yaml")
        >>> p.check_tiers(("bronze", "gold"))
        Traceback (most recent call last):
        ...
        streams.domain.policy_file.PolicyFileError: p.yaml: 1 problem
          p.yaml:3: rules[0].when.loyalty_tiers: unknown loyalty tier 'gould'; the tiers (RETENTION_LOYALTY_TIERS) are: bronze, gold
        """
        problems = [
            (rule.line, f"rules[{i}].when.loyalty_tiers: unknown loyalty tier '{name}'; the tiers (RETENTION_LOYALTY_TIERS) are: {', '.join(tiers)}")
            for i, rule in enumerate(self.rules) for name in rule.when.loyalty_tiers or () if name not in tiers
        ]
        if problems:
            raise PolicyFileError(self.source, problems)


#: The shipped default policy (today's rule plus care and recommendation rules).
DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "deploy" / "policy.yaml"


class PolicyFileError(ValueError):
    """The file is refused; ``problems`` lists ``(line, message)`` pairs, line 1-based."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.source = source
        self.problems = sorted(problems)
        lines = "\n".join(f"  {source}:{line}: {msg}" for line, msg in self.problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}\n{lines}")


def load_policy(path: str | Path) -> Policy:
    """Read and validate the policy file at ``path``; raise :class:`PolicyFileError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(str(p), [(0, f"cannot read the file: {exc}")]) from None
    return load_policy_text(text, str(p))


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    """Validate a policy given as YAML text; ``source`` names it in messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PolicyFileError(source, [(line, f"not valid YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(source, [(0, f"not valid YAML: {exc}")]) from None
    v = _Validator()
    policy = v.policy(root, source)
    if v.problems or policy is None:
        raise PolicyFileError(source, v.problems or [(1, "the file is empty")])
    return policy


# -- validation over the YAML node tree (every node knows its line) -------------------------

_constructor = yaml.constructor.SafeConstructor()
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_TIER = re.compile(TIER_PATTERN)
_MISSING = object()


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Validator:
    def __init__(self) -> None:
        self.problems: list[tuple[int, str]] = []

    def fail(self, node: Node, path: str, message: str) -> None:
        self.problems.append((_line(node), f"{path or 'file'}: {message}"))

    # generic shapes

    def mapping(self, node: Node, path: str, keys: dict[str, bool]) -> dict[str, Node] | None:
        """The mapping's entries by key; ``keys``: allowed key -> required."""
        if not isinstance(node, MappingNode):
            self.fail(node, path, f"must be a mapping of keys to values, got {_kind(node)}")
            return None
        out: dict[str, Node] = {}
        first: dict[str, int] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, ScalarNode) else None
            if not isinstance(key, str):
                self.fail(knode, path, "keys must be plain names")
                continue
            where = f"{path}.{key}" if path else key
            if key in first:
                self.fail(knode, where, f"duplicate key (first given on line {first[key]})")
            elif key not in keys:
                self.fail(knode, where, f"unknown key; allowed here: {', '.join(sorted(keys))}")
            else:
                out[key] = vnode
            first.setdefault(key, _line(knode))
        for key, required in keys.items():
            if required and key not in out:
                self.fail(node, path, f"missing required key '{key}'")
        return out

    def scalar(self, node: Node, path: str) -> Any:
        if not isinstance(node, ScalarNode):
            self.fail(node, path, f"must be a single value, got {_kind(node)}")
            return _MISSING
        return _constructor.construct_object(node)

    def number(
        self, node: Node, path: str, *, integer: bool = False, lo: float | None = None,
        hi: float | None = None, lo_open: bool = False,
    ) -> Any:
        value = self.scalar(node, path)
        if value is _MISSING:
            return _MISSING
        what = "a whole number" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(node, path, f"must be {what}, got {_show(node, value)}")
            return _MISSING
        if lo is not None and (value <= lo if lo_open else value < lo):
            self.fail(node, path, f"must be {'>' if lo_open else '>='} {_num(lo)}, got {_num(value)}")
            return _MISSING
        if hi is not None and value > hi:
            self.fail(node, path, f"must be at most {_num(hi)}, got {_num(value)}")
            return _MISSING
        return value

    def choice(self, node: Node, path: str, allowed: tuple[str, ...], what: str) -> Any:
        value = self.scalar(node, path)
        if value is _MISSING:
            return _MISSING
        if not isinstance(value, str) or value not in allowed:
            self.fail(node, path, f"unknown {what} {_show(node, value)}; expected one of: {', '.join(allowed)}")
            return _MISSING
        return value

    def text(self, node: Node, path: str, pattern: re.Pattern[str] | None = None, hint: str = "") -> Any:
        value = self.scalar(node, path)
        if value is _MISSING:
            return _MISSING
        if not isinstance(value, str) or not value.strip() or (pattern is not None and not pattern.match(value)):
            self.fail(node, path, f"must be {hint or 'a non-empty text'}, got {_show(node, value)}")
            return _MISSING
        return value

    # the sections

    def policy(self, root: Node | None, source: str) -> Policy | None:
        if root is None:
            return None
        m = self.mapping(root, "", {"version": True, "control_share": False, "control_by": False, "lapse": False, "rules": True, "guards": False,
                                    "choose": False})
        if m is None:
            return None
        kw: dict[str, Any] = {}
        if "version" in m:
            version = self.number(m["version"], "version", integer=True)
            if version is not _MISSING and version != 1:
                self.fail(m["version"], "version", f"unsupported version {version}; this worker reads version 1")
            kw["version"] = version
        if "control_share" in m:
            kw["control_share"] = self.number(m["control_share"], "control_share", lo=0, hi=1)
        if "control_by" in m:
            kw["control_by"] = self.choice(m["control_by"], "control_by", CONTROL_BY, "control_by")
        if "lapse" in m:
            kw["lapse"] = self.lapse(m["lapse"])
        if "rules" in m:
            kw["rules"] = self.rules(m["rules"])
        if "guards" in m:
            kw["guards"] = self.guards(m["guards"])
        if "choose" in m:
            kw["choose"] = self.choose(m["choose"], kw.get("rules"))
        if self.problems or any(v is _MISSING for v in kw.values()):
            return None
        return Policy(source=source, **kw)

    def choose(self, node: Node, rules: Any) -> Any:
        if not isinstance(node, SequenceNode):
            self.fail(node, "choose", f"must be a list of rule groups (trigger, action, by), got {_kind(node)}")
            return _MISSING
        out = []
        seen: dict[tuple[str, str], int] = {}
        for i, gnode in enumerate(node.value):
            group = self.choose_group(gnode, f"choose[{i}]", rules if isinstance(rules, tuple) else None)
            if group is _MISSING:
                continue
            pair = (group.trigger, group.action)
            if pair in seen:
                self.fail(gnode, f"choose[{i}]", f"the group {group.key} is given twice (first on line {seen[pair]})")
            seen.setdefault(pair, group.line)
            out.append(group)
        return tuple(out)

    def choose_group(self, node: Node, path: str, rules: tuple[Rule, ...] | None) -> Any:
        keys = {"trigger": True, "action": True, "by": True, "algorithm": False, "exploration": False, "reward": False}
        m = self.mapping(node, path, keys)
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {"line": _line(node)}
        if "trigger" in m:
            kw["trigger"] = self.choice(m["trigger"], f"{path}.trigger", TRIGGERS, "trigger")
        if "action" in m:
            kw["action"] = self.choice(m["action"], f"{path}.action", ACTION_KINDS, "action kind")
        if "by" in m:
            kw["by"] = self.choice(m["by"], f"{path}.by", CHOOSE_BY, "way to choose")
        if kw.get("by") == "first":
            for key in ("algorithm", "exploration", "reward"):
                if key in m:
                    self.fail(m[key], f"{path}.{key}", "applies to 'by: bandit' only")
                    kw[key] = _MISSING
        if "algorithm" in m and kw.get("by") != "first":
            kw["algorithm"] = self.choice(m["algorithm"], f"{path}.algorithm", ALGORITHMS, "bandit algorithm")
        if "exploration" in m and kw.get("by") != "first":
            greedy = kw.get("algorithm") == "epsilon_greedy"
            kw["exploration"] = self.number(m["exploration"], f"{path}.exploration", lo=0, hi=1 if greedy else None)
        if "reward" in m and kw.get("by") != "first":
            kw["reward"] = self.reward(m["reward"], f"{path}.reward", kw.get("action"))
        trigger, action = kw.get("trigger"), kw.get("action")
        if isinstance(trigger, str) and isinstance(action, str) and rules is not None:
            arms = [r.name for r in rules if r.trigger == trigger and r.action == action]
            if not arms:
                self.fail(node, path, f"no rule has trigger '{trigger}' and action '{action}': nothing to choose from")
                return _MISSING
            targeted = [r for r in rules if r.trigger == trigger and r.action == action and r.target == "uplift"]
            if kw.get("by") == "bandit" and targeted:
                self.fail(node, path, f"a bandit chooses among rules, but '{targeted[0].name}' (line {targeted[0].line}) is targeted by "
                                      "uplift; use 'target: risk' in a bandit's group")
                return _MISSING
            if kw.get("by") == "bandit" and len(arms) < 2:
                self.fail(node, path, f"a bandit chooses among rules, but only '{arms[0]}' has trigger '{trigger}' "
                                      f"and action '{action}' (add a rule, or use 'by: first')")
                return _MISSING
        return _build(Choose, kw)

    def reward(self, node: Node, path: str, action: Any) -> Any:
        m = self.mapping(node, path, {"conversion": False, "coupon_cost": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "conversion" in m:
            kw["conversion"] = self.number(m["conversion"], f"{path}.conversion", lo=0, lo_open=True)
        if "coupon_cost" in m:
            if action != "coupon":
                self.fail(m["coupon_cost"], f"{path}.coupon_cost", "applies to coupon groups only")
                return _MISSING
            kw["coupon_cost"] = self.number(m["coupon_cost"], f"{path}.coupon_cost", lo=0)
        return _build(Reward, kw)

    def lapse(self, node: Node) -> Any:
        m = self.mapping(node, "lapse", {k: False for k in ("min_purchases", "min_days", "gap_factor", "recheck_days", "give_up_days")})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        for key, vnode in m.items():
            if key == "min_purchases":
                kw[key] = self.number(vnode, f"lapse.{key}", integer=True, lo=1)
            else:
                kw[key] = self.number(vnode, f"lapse.{key}", lo=0, lo_open=True)
        return _build(Lapse, kw)

    def rules(self, node: Node) -> Any:
        if not isinstance(node, SequenceNode):
            self.fail(node, "rules", f"must be a list of rules, got {_kind(node)}")
            return _MISSING
        rules = []
        names: dict[str, int] = {}
        for i, rnode in enumerate(node.value):
            rule = self.rule(rnode, f"rules[{i}]")
            if rule is _MISSING:
                continue
            if rule.name in names:
                self.fail(rnode, f"rules[{i}].name", f"duplicate rule name '{rule.name}' (first on line {names[rule.name]})")
            names.setdefault(rule.name, rule.line)
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: Node, path: str) -> Any:
        keys = {"name": True, "trigger": True, "action": True, "when": False, "coupon": False, "recommendation": False, "care": False,
                "target": False, "uplift": False}
        m = self.mapping(node, path, keys)
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {"line": _line(node)}
        if "name" in m:
            kw["name"] = self.text(m["name"], f"{path}.name", re.compile(r"^[a-z][a-z0-9_]*$"), "a name of lower-case letters, digits and _")
        if "trigger" in m:
            kw["trigger"] = self.choice(m["trigger"], f"{path}.trigger", TRIGGERS, "trigger")
        if "action" in m:
            kw["action"] = action = self.choice(m["action"], f"{path}.action", ACTION_KINDS, "action kind")
            if action is not _MISSING:
                wanted = ACTION_SECTION[action]
                for section in ACTION_SECTION.values():
                    if section != wanted and section in m:
                        self.fail(m[section], f"{path}.{section}", f"does not apply to a {action} action (use '{wanted}')")
                if wanted not in m:
                    self.fail(node, path, f"missing required key '{wanted}' for a {action} action")
        if "when" in m:
            kw["when"] = self.when(m["when"], f"{path}.when")
        if "coupon" in m:
            kw["coupon"] = self.coupon(m["coupon"], f"{path}.coupon")
        if "recommendation" in m:
            kw["recommendation"] = self.recommendation(m["recommendation"], f"{path}.recommendation")
        if "care" in m:
            kw["care"] = self.care(m["care"], f"{path}.care")
        if kw.get("trigger") == "lapse" and kw.get("action") not in ("coupon", _MISSING, None):
            self.fail(m["trigger"], f"{path}.trigger", "the lapse trigger fires coupons only (today's rule)")
        if "target" in m:
            kw["target"] = self.choice(m["target"], f"{path}.target", TARGETS, "target")
        if kw.get("target") == "uplift":
            kw["uplift"] = self.uplift_target(m["uplift"], f"{path}.uplift") if "uplift" in m else _MISSING
            if "uplift" not in m:
                self.fail(node, path, "missing required key 'uplift' for 'target: uplift' (its threshold and/or top_share)")
        elif "uplift" in m and kw.get("target") is not _MISSING:
            self.fail(m["uplift"], f"{path}.uplift", "applies to 'target: uplift' only")
            kw["uplift"] = _MISSING
        return _build(Rule, kw)

    def uplift_target(self, node: Node, path: str) -> Any:
        m = self.mapping(node, path, {"threshold": False, "top_share": False, "exploration": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "threshold" in m:
            kw["threshold"] = self.number(m["threshold"], f"{path}.threshold", lo=-1, hi=1)
        if "top_share" in m:
            kw["top_share"] = self.number(m["top_share"], f"{path}.top_share", lo=0, lo_open=True, hi=1)
        if "exploration" in m:
            share = self.number(m["exploration"], f"{path}.exploration", lo=0, hi=1)
            if isinstance(share, (int, float)) and share < MIN_EXPLORATION:
                self.fail(m["exploration"], f"{path}.exploration",
                          f"must be at least {_num(MIN_EXPLORATION)}, got {_num(share)}: without decisions at random the model stops learning")
                share = _MISSING
            kw["exploration"] = share
        if "threshold" not in m and "top_share" not in m:
            self.fail(node, path, "give 'threshold' (the least predicted uplift treated) and/or 'top_share' (of the candidates)")
            return _MISSING
        return _build(UpliftTarget, kw)

    def items(self, node: Node, path: str, what: str, item: Callable[[Node, str], Any]) -> Any:
        """A non-empty list, each element read by ``item(node, path)``: a tuple, or _MISSING
        (every problem reported) when the list or any element is wrong."""
        if not isinstance(node, SequenceNode) or not node.value:
            self.fail(node, path, f"must be a non-empty list of {what}, got {_kind(node)}")
            return _MISSING
        values = tuple(item(n, f"{path}[{i}]") for i, n in enumerate(node.value))
        return _MISSING if _MISSING in values else values

    def when(self, node: Node, path: str) -> Any:
        keys = ("stages", "churn_at_least", "churn_below", "min_purchases", "loyalty_tiers", "min_order_value")
        m = self.mapping(node, path, dict.fromkeys(keys, False))
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "stages" in m:
            kw["stages"] = self.items(
                m["stages"], f"{path}.stages", "lifecycle stages", lambda n, p: self.choice(n, p, STAGES, "lifecycle stage")
            )
        for key in ("churn_at_least", "churn_below"):
            if key in m:
                kw[key] = self.number(m[key], f"{path}.{key}", lo=0, hi=1)
        if "min_purchases" in m:
            kw["min_purchases"] = self.number(m["min_purchases"], f"{path}.min_purchases", integer=True, lo=0)
        if "loyalty_tiers" in m:
            hint = "a loyalty tier name (lower-case letters, digits, _ and -)"
            kw["loyalty_tiers"] = self.items(
                m["loyalty_tiers"], f"{path}.loyalty_tiers", "loyalty tier names", lambda n, p: self.text(n, p, _TIER, hint)
            )
        if "min_order_value" in m:
            kw["min_order_value"] = self.number(m["min_order_value"], f"{path}.min_order_value", lo=0)
        lo, hi = kw.get("churn_at_least"), kw.get("churn_below")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo >= hi:
            self.fail(m["churn_below"], f"{path}.churn_below", f"must be above churn_at_least ({_num(lo)}): no customer could match")
            return _MISSING
        return _build(When, kw)

    def coupon(self, node: Node, path: str) -> Any:
        m = self.mapping(node, path, {k: False for k in ("percent", "amount", "currency", "max_value", "valid_days")})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "percent" in m:
            kw["percent"] = self.number(m["percent"], f"{path}.percent", lo=0, lo_open=True, hi=100)
        if "amount" in m:
            kw["amount"] = self.number(m["amount"], f"{path}.amount", lo=0, lo_open=True)
        if "currency" in m:
            kw["currency"] = self.text(m["currency"], f"{path}.currency", _CURRENCY, "a three-letter ISO currency code such as EUR")
        if "max_value" in m:
            kw["max_value"] = self.number(m["max_value"], f"{path}.max_value", lo=0, lo_open=True)
        if "valid_days" in m:
            kw["valid_days"] = self.number(m["valid_days"], f"{path}.valid_days", lo=0, lo_open=True)
        if ("percent" in m) == ("amount" in m):
            self.fail(node, path, "give exactly one of 'percent' and 'amount'")
            return _MISSING
        if "amount" in m and "currency" not in m:
            self.fail(node, path, "an 'amount' coupon needs a 'currency'")
            return _MISSING
        if "percent" in m:
            for key in ("currency",):
                if key in m:
                    self.fail(m[key], f"{path}.{key}", "applies to 'amount' coupons only")
                    return _MISSING
        if "amount" in m and "max_value" in m:
            self.fail(m["max_value"], f"{path}.max_value", "applies to 'percent' coupons only")
            return _MISSING
        return _build(Coupon, kw)

    def recommendation(self, node: Node, path: str) -> Any:
        m = self.mapping(node, path, {"items": False, "valid_days": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "items" in m:
            kw["items"] = self.number(m["items"], f"{path}.items", integer=True, lo=1, hi=100)
        if "valid_days" in m:
            kw["valid_days"] = self.number(m["valid_days"], f"{path}.valid_days", lo=0, lo_open=True)
        return _build(Recommendation, kw)

    def care(self, node: Node, path: str) -> Any:
        m = self.mapping(node, path, {"priority": False, "topic": False, "valid_days": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "priority" in m:
            kw["priority"] = self.choice(m["priority"], f"{path}.priority", PRIORITIES, "priority")
        if "topic" in m:
            kw["topic"] = self.text(m["topic"], f"{path}.topic")
        if "valid_days" in m:
            kw["valid_days"] = self.number(m["valid_days"], f"{path}.valid_days", lo=0, lo_open=True)
        return _build(Care, kw)

    def guards(self, node: Node) -> Any:
        m = self.mapping(node, "guards", {"cooldown_days": False, "checkout_window_minutes": False, "daily_budget": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "cooldown_days" in m:
            cm = self.mapping(m["cooldown_days"], "guards.cooldown_days", {k: False for k in ACTION_KINDS})
            if cm is None:
                kw["cooldown_days"] = _MISSING
            else:
                days = {k: self.number(v, f"guards.cooldown_days.{k}", lo=0) for k, v in cm.items()}
                kw["cooldown_days"] = _MISSING if _MISSING in days.values() else {**Guards().cooldown_days, **days}
        if "checkout_window_minutes" in m:
            kw["checkout_window_minutes"] = self.number(m["checkout_window_minutes"], "guards.checkout_window_minutes", lo=0)
        if "daily_budget" in m:
            kw["daily_budget"] = self.daily_budget(m["daily_budget"], "guards.daily_budget")
        return _build(Guards, kw)

    def daily_budget(self, node: Node, path: str) -> Any:
        m = self.mapping(node, path, {"count": False, "per_kind": False})
        if m is None:
            return _MISSING
        kw: dict[str, Any] = {}
        if "count" in m:
            kw["count"] = self.number(m["count"], f"{path}.count", integer=True, lo=0)
        if "per_kind" in m:
            pm = self.mapping(m["per_kind"], f"{path}.per_kind", {k: False for k in ACTION_KINDS})
            if pm is None:
                kw["per_kind"] = _MISSING
            else:
                per: dict[str, Any] = {}
                for kind, knode in pm.items():
                    where = f"{path}.per_kind.{kind}"
                    km = self.mapping(knode, where, {"count": False, "value": False})
                    if km is None:
                        per[kind] = _MISSING
                        continue
                    kk: dict[str, Any] = {}
                    if "count" in km:
                        kk["count"] = self.number(km["count"], f"{where}.count", integer=True, lo=0)
                    if "value" in km:
                        if kind != "coupon":
                            self.fail(km["value"], f"{where}.value", "a value budget applies to coupons only")
                            kk["value"] = _MISSING
                        else:
                            kk["value"] = self.number(km["value"], f"{where}.value", lo=0)
                    per[kind] = _build(KindBudget, kk)
                kw["per_kind"] = _MISSING if _MISSING in per.values() else per
        return _build(DailyBudget, kw)


def _build(cls: Any, kw: dict[str, Any]) -> Any:
    if any(v is _MISSING for v in kw.values()):
        return _MISSING
    return cls(**kw)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return f"'{node.value}'"


def _show(node: Node, value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"'{node.value}' (a yes/no value)"
    return f"'{node.value}'"


def _num(x: float) -> str:
    return f"{x:g}"
