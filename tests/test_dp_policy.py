"""The site privacy policy: ranges, defaults and strict parsing."""

from __future__ import annotations

import pytest

from privacy.policy import PolicyError, SitePrivacyPolicy, default_delta


def test_defaults_are_rdp_hooks_calibrated_and_noise_from_the_csprng() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=4.0)
    assert policy.accountant == "rdp"
    assert policy.grad_sample_mode == "hooks"
    assert policy.calibrates and policy.noise_multiplier is None
    assert policy.secure_mode is True  # noise no one else can regenerate, unless turned off
    assert policy.max_grad_norm == 1.0


@pytest.mark.parametrize("n", [1, 7, 100, 10_000, 99_999, 100_000, 10_000_000])
def test_default_delta_is_strictly_below_one_over_n(n: int) -> None:
    delta = SitePrivacyPolicy(budget_epsilon=1.0).resolve_delta(n)
    assert 0.0 < delta < 1.0 / n
    assert delta <= 1e-5
    assert delta == default_delta(n)


def test_explicit_delta_is_kept() -> None:
    assert SitePrivacyPolicy(budget_epsilon=1.0, delta=1e-6).resolve_delta(50) == 1e-6


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("budget_epsilon", 0.0),
        ("budget_epsilon", -1.0),
        ("budget_epsilon", float("inf")),
        ("budget_epsilon", float("nan")),
        ("delta", 0.0),
        ("delta", 1.0),
        ("delta", -1e-5),
        ("delta", 1.5),
        ("max_grad_norm", 0.0),
        ("max_grad_norm", -0.5),
        ("noise_multiplier", -0.1),
        ("min_noise_multiplier", -1.0),
        ("accountant", "gdp"),
        ("grad_sample_mode", "ew"),
        ("secure_mode", 1),
    ],
)
def test_out_of_range_setting_is_refused_naming_field_and_value(field: str, value: object) -> None:
    kwargs: dict[str, object] = {"budget_epsilon": 1.0, field: value}
    with pytest.raises(PolicyError) as info:
        SitePrivacyPolicy(**kwargs)  # type: ignore[arg-type]
    assert f"`{field}`" in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("field", ["budget_epsilon", "delta", "max_grad_norm",
                                   "noise_multiplier", "min_noise_multiplier"])
def test_bool_posing_as_number_is_refused(field: str) -> None:
    kwargs: dict[str, object] = {"budget_epsilon": 1.0, field: True}
    with pytest.raises(PolicyError, match=f"`{field}` must be a number, got True"):
        SitePrivacyPolicy(**kwargs)  # type: ignore[arg-type]


def test_string_number_is_refused() -> None:
    with pytest.raises(PolicyError, match="`budget_epsilon` must be a number, got '4'"):
        SitePrivacyPolicy(budget_epsilon="4")  # type: ignore[arg-type]


def test_fixed_sigma_below_floor_is_refused() -> None:
    with pytest.raises(PolicyError, match="below `min_noise_multiplier`"):
        SitePrivacyPolicy(budget_epsilon=1.0, noise_multiplier=0.5, min_noise_multiplier=0.8)


def test_from_mapping_accepts_kebab_and_snake_case() -> None:
    policy = SitePrivacyPolicy.from_mapping({
        "budget-epsilon": 8, "delta": 1e-6, "max-grad-norm": 0.5, "accountant": "prv",
        "noise_multiplier": 1.2, "min-noise-multiplier": 0.7, "grad-sample-mode": "ghost",
        "secure-mode": True,
    })
    assert policy == SitePrivacyPolicy(
        budget_epsilon=8, delta=1e-6, max_grad_norm=0.5, accountant="prv", noise_multiplier=1.2,
        min_noise_multiplier=0.7, grad_sample_mode="ghost", secure_mode=True)
    assert SitePrivacyPolicy.from_mapping(policy.to_mapping()) == policy


def test_from_mapping_refuses_unknown_key() -> None:
    with pytest.raises(PolicyError, match="unknown privacy policy key 'budget-epsilom'"):
        SitePrivacyPolicy.from_mapping({"budget-epsilom": 1.0})


def test_from_mapping_refuses_same_key_twice() -> None:
    with pytest.raises(PolicyError, match="given twice"):
        SitePrivacyPolicy.from_mapping({"budget-epsilon": 1.0, "budget_epsilon": 2.0})


def test_from_mapping_needs_a_budget() -> None:
    with pytest.raises(PolicyError, match="budget-epsilon"):
        SitePrivacyPolicy.from_mapping({"delta": 1e-5})


def test_policy_is_frozen() -> None:
    policy = SitePrivacyPolicy(budget_epsilon=1.0)
    with pytest.raises(AttributeError):
        policy.budget_epsilon = 100.0  # type: ignore[misc]


def test_summary_names_the_settings() -> None:
    line = SitePrivacyPolicy(budget_epsilon=4.0, max_grad_norm=0.5).summary(1000)
    assert "budget eps=4" in line and "C=0.5" in line and "calibrated" in line
    assert "delta=1e-05" in line
