"""A bit-for-bit fingerprint of scorelab's numbers, for refactors that must not change behaviour.

Every sampler on the exact Gaussian-mixture oracle (MATH.md 6) under every process it runs on, the
Metropolis correctors, guidance, composition, inpainting, SDEdit, likelihoods, latents, every loss on a
small seeded network, and a few optimizer steps of every training framework: each result is saved as a
tensor in one safetensors file. Run it before a change and after, and compare:

    python benchmarks/fingerprint.py save /tmp/before.safetensors
    python benchmarks/fingerprint.py save /tmp/after.safetensors
    python benchmarks/fingerprint.py compare /tmp/before.safetensors /tmp/after.safetensors

``compare`` lists every entry that differs (with its largest absolute difference) and every entry only one
file has; it exits 1 unless the two are identical. One thread, CPU: about two minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

import scorelab as sl
from scorelab import samplers as S
from scorelab.conditional import inpaint, sdedit
from scorelab.likelihood import decode, encode, ode_log_likelihood
from scorelab.networks import MLP, MLPConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import mixture_2d_params  # noqa: E402


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Recorder:
    """name -> tensor, with the failures of a step recorded as such (a refactor must keep them too)."""

    def __init__(self) -> None:
        self.out: dict[str, Tensor] = {}

    def put(self, name: str, value) -> None:
        if isinstance(value, Tensor):
            self.out[name] = value.detach().cpu().contiguous().clone()
        elif value is None:
            self.out[name] = torch.tensor([float("nan")], dtype=torch.float64)
        else:
            self.out[name] = torch.as_tensor(value, dtype=torch.float64).reshape(-1).clone()

    def result(self, name: str, run: Callable[[], "S.SampleResult"]) -> None:
        r = run()
        self.put(name, r.samples)
        self.put(name + ".nfe", r.nfe)
        if r.acceptance is not None:
            self.put(name + ".acceptance", r.acceptance)


def processes() -> dict[str, sl.SDE]:
    return {"ddpm": sl.DDPM(), "ddpm-cosine-100": sl.DDPM(100, "cosine"), "vp": sl.VPSDE(), "subvp": sl.SubVPSDE(),
            "ve": sl.VESDE(), "ncsn": sl.NCSN(), "edm": sl.VESDE(0.002, 80.0)}


def record_processes(rec: Recorder) -> None:
    t = torch.linspace(1e-3, 1.0, 17, dtype=torch.float64)
    for name, p in processes().items():
        a, s = p.coefficients(t)
        rec.put(f"process/{name}/a", a)
        rec.put(f"process/{name}/s", s)
        rec.put(f"process/{name}/sigma", p.sigma(t))
        rec.put(f"process/{name}/time_of_sigma", p.time_of_sigma(p.sigma(t)))
        rec.put(f"process/{name}/drift", p.drift(torch.ones(17, 2, dtype=torch.float64), t))
        rec.put(f"process/{name}/diffusion", p.diffusion(t))
        f, g2 = p.discretize(torch.ones(16, 2, dtype=torch.float64), t[1:], t[:-1])
        rec.put(f"process/{name}/discretize", torch.cat([f.flatten(), g2.flatten()]))
        rec.put(f"process/{name}/score_weight", p.score_weight(t))
        rec.put(f"process/{name}/train_times", p.sample_train_times(64, gen(3)))


def record_samplers(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    ps = processes()
    runs = {
        "ancestral": ("ddpm", "vp", "ve"), "ddim": ("ddpm", "ve", "edm"), "pc": ("ddpm", "vp", "subvp", "ve", "ncsn"),
        "em": ("ddpm", "ve", "subvp"), "heun": ("ddpm", "edm"), "dpm++2m": ("ddpm", "vp", "ve"),
        "dpm++3m": ("ddpm", "ve"), "unipc": ("ddpm", "ve", "edm"), "langevin": ("ncsn", "ve"), "ld": ("vp",),
    }
    steps = {"ancestral": 20, "ddim": 10, "pc": 20, "em": 30, "heun": 6, "dpm++2m": 10, "dpm++3m": 10,
             "unipc": 10, "langevin": 5, "ld": 40}
    for sampler, names in runs.items():
        for name in names:
            model = mixture.model(ps[name])
            rec.result(f"sample/{sampler}/{name}",
                       lambda: S.sample(model, (64, 2), sampler, steps[sampler], noise=gen(1)))
    model = mixture.model(ps["ddpm"])
    rec.result("sample/ode/ddpm", lambda: S.sample(model, (32, 2), "ode", noise=gen(1), rtol=1e-3, atol=1e-3))
    rec.result("sample/ode/ve", lambda: S.sample(mixture.model(ps["ve"]), (32, 2), "ode", noise=gen(1),
                                                 rtol=1e-3, atol=1e-3))
    rec.result("sample/unipc3/ddpm", lambda: S.sample(model, (64, 2), "unipc", 10, noise=gen(1), order=3))
    rec.result("sample/ancestral-tilde/ddpm", lambda: S.sample(model, (64, 2), "ancestral", 20, noise=gen(1),
                                                               variance="beta_tilde"))
    rec.result("sample/ddim-eta/ve", lambda: S.sample(mixture.model(ps["ve"]), (64, 2), "ddim", 10, noise=gen(1),
                                                      eta=0.5, grid="karras"))
    rec.result("sample/heun-churn/edm", lambda: S.sample(mixture.model(ps["edm"]), (64, 2), "heun", 6,
                                                         noise=gen(1), churn=10.0))
    rec.result("sample/persample/dpm++2m", lambda: S.sample(model, (8, 2), "dpm++2m", 10,
                                                            noise=S.PerSampleNoise(range(8))))
    rec.result("sample/persample/pc", lambda: S.sample(model, (8, 2), "pc", 10, noise=S.PerSampleNoise(range(8))))
    for predictor in ("euler_maruyama", "ancestral", "none"):
        rec.result(f"sample/pc-{predictor}/vp", lambda: S.sample(
            mixture.model(ps["vp"]), (64, 2), "pc", 15, noise=gen(1), predictor=predictor,
            corrector="annealed_langevin", snr_norm="batch"))
    for name in ("vp", "ve"):
        energy = mixture.energy_model(ps[name])
        for corrector in ("mala", "hmc", "langevin"):
            rec.result(f"sample/pc-{corrector}/{name}", lambda: S.sample(
                energy, (64, 2), "pc", 10, noise=gen(1), corrector=corrector, corrector_steps=2))
        rec.result(f"sample/pc-mala-target/{name}", lambda: S.sample(
            energy, (64, 2), "pc", 10, noise=gen(1), corrector="mala", target_acceptance=0.6))
        for method in ("ula", "mala", "hmc"):
            rec.result(f"sample/mcmc-{method}/{name}", lambda: S.mcmc.mcmc(
                energy, (64, 2), 20, method=method, step_size=0.01, noise=gen(1), t=0.1))


def record_guidance_and_composition(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    vp, ddpm = sl.VPSDE(), sl.DDPM()
    labels = torch.arange(64) % 3
    classes = mixture.class_model(ddpm)
    rec.result("guidance/cfg", lambda: S.sample(sl.ClassifierFreeGuidance(classes, labels, 2.0), (64, 2),
                                                "dpm++2m", 10, noise=gen(1)))
    rec.result("guidance/conditional", lambda: S.sample(sl.Conditional(classes, labels), (64, 2), "ancestral",
                                                        20, noise=gen(1)))
    rec.result("guidance/classifier", lambda: S.sample(
        sl.ClassifierGuidance(mixture.model(ddpm), mixture.classifier(ddpm), labels, 2.0), (64, 2), "ddim", 10,
        noise=gen(1)))
    rec.result("guidance/cfg-ode", lambda: S.sample(sl.ClassifierFreeGuidance(mixture.class_model(vp), labels[:16],
                                                                              1.0), (16, 2), "ode", noise=gen(1),
                                                    rtol=1e-3, atol=1e-3))
    a, b = mixture.energy_model(vp), mixture.component(0).energy_model(vp)
    rec.result("compose/product-mala", lambda: S.sample(sl.compose.product(a, b), (64, 2), "pc", 10, noise=gen(1),
                                                        corrector="mala"))
    rec.result("compose/mixture-hmc", lambda: S.sample(sl.compose.mixture([a, b], [0.3, 0.7]), (64, 2), "pc", 10,
                                                       noise=gen(1), corrector="hmc"))
    rec.result("compose/temperature", lambda: S.sample(sl.compose.temperature(mixture.model(vp), 0.5), (64, 2),
                                                       "em", 20, noise=gen(1)))
    rec.result("compose/guidance-product", lambda: S.sample(
        sl.compose.guidance_product(sl.Conditional(mixture.class_model(vp), labels), mixture.model(vp), 1.0),
        (64, 2), "dpm++2m", 10, noise=gen(1)))


def record_conditional(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    ddpm, ve = sl.DDPM(), sl.VESDE()
    known = mixture.sample(16, gen(5)).float()
    mask = torch.tensor([True, False])
    for method, sampler, steps in (("replace", "ancestral", 20), ("replace", "pc", 10), ("replace", "ddim", 10),
                                   ("replace", "dpm++2m", 10), ("repaint", "ancestral", 10),
                                   ("dps", "ancestral", 20)):
        options = {"jump_length": 3, "resample": 2} if method == "repaint" else {}
        rec.result(f"inpaint/{method}-{sampler}", lambda: inpaint(mixture.model(ddpm), known, mask, method=method,
                                                                 sampler=sampler, steps=steps, noise=gen(1),
                                                                 **options))
    rec.result("inpaint/replace-ve-heun", lambda: inpaint(mixture.model(ve), known, mask, method="replace",
                                                          sampler="heun", steps=6, noise=gen(1)))
    for sampler in ("em", "pc", "ancestral", "ddim", "dpm++2m", "heun", "unipc"):
        rec.result(f"sdedit/{sampler}", lambda: sdedit(mixture.model(ddpm), known, 0.4, sampler=sampler,
                                                       noise=gen(1), **({"steps": 8} if sampler != "ancestral" else {})))


def record_likelihood(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    x = mixture.sample(16, gen(7))
    for name, p in (("vp", sl.VPSDE()), ("ddpm", sl.DDPM()), ("ve", sl.VESDE())):
        model = mixture.model(p)
        res = ode_log_likelihood(model, x, divergence="exact", rtol=1e-4, atol=1e-4)
        rec.put(f"likelihood/{name}/exact", res.log_prob)
        rec.put(f"likelihood/{name}/exact.nfe", res.nfe)
        res = ode_log_likelihood(model, x, probes=2, rtol=1e-4, atol=1e-4, generator=gen(2))
        rec.put(f"likelihood/{name}/hutchinson", res.per_probe)
        for method in ("ode", "ddim"):
            z = encode(model, x, method=method, steps=20, rtol=1e-4, atol=1e-4)
            rec.put(f"latent/{name}/{method}", z)
            rec.put(f"latent/{name}/{method}/decoded", decode(model, z, method=method, steps=20, rtol=1e-4, atol=1e-4))


def tiny_mlp(seed: int, dim: int = 2) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(dim=dim, hidden=32, depth=2))


class WithVariance(torch.nn.Module):
    """An MLP that also gives Nichol & Dhariwal's variance channels, in [-1, 1]."""

    def __init__(self, seed: int):
        super().__init__()
        self.mean, self.var = tiny_mlp(seed), tiny_mlp(seed + 1)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return torch.cat([self.mean(x, c), torch.tanh(self.var(x, c))], 1)


def record_general_sde(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    sde = sl.named_sde("double_well")
    model = sl.Model(tiny_mlp(11), sde, target="score")
    for sampler, steps in (("em", 20), ("pc", 10), ("ld", 10)):
        rec.result(f"general/{sampler}", lambda: S.sample(model, (32, 2), sampler, steps, noise=gen(1)))
    rec.result("general/ode", lambda: S.sample(model, (16, 2), "ode", noise=gen(1), rtol=1e-3, atol=1e-3))
    x0 = mixture.sample(32, gen(9)).float()
    rec.put("general/simulate", sde.simulate(x0, torch.full((32,), 0.5, dtype=torch.float64), 20, gen(2)))
    with torch.no_grad():
        rec.put("general/ssm", sl.objectives.sliced_score_matching_loss(model, x0, generator=gen(3), steps=20))
        rec.put("general/sm", sl.objectives.score_matching_loss(model, x0, generator=gen(3), steps=20))


def record_losses(rec: Recorder, mixture: sl.GaussianMixture) -> None:
    x0 = mixture.sample(32, gen(9)).float().clamp(-1, 1)
    x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1                        # on the 256 levels, for the VLB
    for name, p in processes().items():
        model = sl.Model(tiny_mlp(12), p, target="eps")
        for key, weighting in (("s2", "s2"), ("g2", "g2"), ("min-snr", "min-snr"), ("edm", "preconditioned")):
            rec.put(f"loss/{name}/dsm-{key}", sl.objectives.dsm_loss(model, x0, weighting=weighting,
                                                                     generator=gen(4)))
        rec.put(f"loss/{name}/ssm-vr", sl.objectives.sliced_score_matching_loss(model, x0, generator=gen(4)))
        rec.put(f"loss/{name}/sm", sl.objectives.score_matching_loss(model, x0, generator=gen(4)))
    ddpm = sl.DDPM(50)
    model = sl.Model(WithVariance(13), ddpm, target="eps", learned_variance=True)
    rec.put("loss/hybrid", sl.objectives.hybrid_loss(model, x0, generator=gen(4)))
    rec.put("loss/vlb", sl.vlb(model, x0, generator=gen(4)).total)
    for target in ("x0", "v", "score"):
        m = sl.Model(tiny_mlp(14), sl.VPSDE(), target=target)
        rec.put(f"loss/vp-{target}", sl.objectives.dsm_loss(m, x0, generator=gen(4)))


#: Short training runs: (framework, options). Each takes 3 optimizer steps of a tiny network.
TRAIN_RUNS = {
    "ddpm": {"framework": "ddpm"},
    "ddpm-cfg": {"framework": "ddpm", "class_conditional": True},
    "ddpm-hybrid": {"framework": "ddpm", "loss": "hybrid"},
    "ddpm-min-snr-v": {"framework": "ddpm", "loss": "min-snr", "target": "v"},
    "ncsn": {"framework": "ncsn"},
    "vp": {"framework": "vp"},
    "subvp": {"framework": "subvp", "loss": "dsm-likelihood"},
    "ve": {"framework": "ve"},
    "edm": {"framework": "edm"},
    "sde": {"framework": "sde", "loss": "ssm-vr"},
    "energy": {"framework": "vp", "parameterization": "energy"},
    "multinomial": {"framework": "multinomial", "process_options": {"num_steps": 20}},
    "multinomial-uniform-steps": {"framework": "multinomial", "process_options": {"num_steps": 20},
                                  "loss_options": {"step_sampling": "uniform"}, "loss": "vlb-ce"},
    "multinomial-ar": {"framework": "multinomial", "transitions": "autoregressive",
                       "network_options": {"width": 16, "heads": 2, "decoder_layers": 1, "unet_channels": 8}},
}


def record_training(rec: Recorder) -> None:
    from scorelab.training import TrainConfig, train

    tiny = {"base_channels": 8, "num_res_blocks": 1, "norm_groups": 4}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in TRAIN_RUNS.items():
            net = {} if "network_options" in options else {"network_options": tiny}
            config = TrainConfig(data="digits", out=f"{tmp}/{name}", steps=3, batch_size=8, seed=1, warmup=1,
                                 sample_every=1000, checkpoint_every=1000, num_preview=4, preview_steps=2,
                                 log_every=1, **net, **options)
            result = train(config, progress=False)
            rec.put(f"train/{name}/losses", torch.tensor(result.losses, dtype=torch.float64))
            state = result.model.net.state_dict()
            rec.put(f"train/{name}/ema", torch.cat([v.flatten().double() for v in state.values()]))
            if name.startswith("multinomial"):
                rec.result(f"train/{name}/samples", lambda: S.sample(result.model, (4, 1, 8, 8), "multinomial",
                                                                     None if name.endswith("ar") else 5,
                                                                     noise=gen(1)))
            else:
                rec.result(f"train/{name}/samples", lambda: S.sample(result.model, (4, 1, 8, 8),
                                                                     "em" if name == "sde" else "ddim", 3,
                                                                     noise=gen(1)))


def fingerprint() -> dict[str, Tensor]:
    torch.set_num_threads(1)
    mixture = sl.GaussianMixture(*mixture_2d_params())
    rec = Recorder()
    for part in (record_processes, record_samplers, record_guidance_and_composition, record_conditional,
                 record_likelihood, record_general_sde, record_losses, record_training):
        print(f"  {part.__name__[len('record_'):]}", flush=True)
        if part in (record_processes, record_training):
            part(rec)
        else:
            part(rec, mixture)
    return rec.out


def compare(a: dict[str, Tensor], b: dict[str, Tensor]) -> int:
    differ = 0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"only in {'the second' if key not in a else 'the first'}: {key}")
            differ += 1
        elif a[key].shape != b[key].shape or a[key].dtype != b[key].dtype:
            print(f"{key}: {tuple(a[key].shape)} {a[key].dtype} vs {tuple(b[key].shape)} {b[key].dtype}")
            differ += 1
        elif not torch.equal(a[key], b[key]) and not (a[key].isnan().all() and b[key].isnan().all()):
            diff = (a[key].double() - b[key].double()).abs().max().item()
            scale = a[key].double().abs().max().item()
            print(f"{key}: differs, largest difference {diff:.3g} (values up to {scale:.3g})")
            differ += 1
    print(f"{len(set(a) | set(b))} entries, {differ} differ")
    return int(differ > 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save")
    s.add_argument("path")
    c = sub.add_parser("compare")
    c.add_argument("first")
    c.add_argument("second")
    args = p.parse_args()
    if args.command == "save":
        out = fingerprint()
        save_file(out, args.path)
        print(f"{len(out)} entries -> {args.path}")
        return 0
    return compare(load_file(args.first), load_file(args.second))


if __name__ == "__main__":
    raise SystemExit(main())
