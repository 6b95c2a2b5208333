import torch

from cifar_mlp import environment


def test_machine_line_names_a_cpu_without_native_bf16_and_only_that():
    env = {"cpu": "AMD EPYC", "torch_threads": 2, "gpu": None, "torch": "2.14.1", "python": "3.11.7"}
    assert environment.machine_line(env) == "AMD EPYC, 2 threads (torch 2.14.1, Python 3.11.7)"
    assert environment.machine_line(env | {"cpu_bf16": True}) == environment.machine_line(env)
    assert environment.machine_line(env | {"cpu_bf16": False}).startswith("AMD EPYC (no native bf16), 2 threads")
    assert environment.machine_line(env | {"torch_threads": 1}).startswith("AMD EPYC, 1 thread (")
    assert environment.machine_line(env | {"cpu_bf16": False, "gpu": "H200"}).startswith("H200 (torch")


def test_bf16_is_native_on_the_cpu_exactly_when_the_cpu_has_it(monkeypatch):
    for has in (True, False):
        monkeypatch.setattr(environment, "cpu_has_bf16", lambda has=has: has)
        assert environment.bf16_is_native(torch.device("cpu")) is has
