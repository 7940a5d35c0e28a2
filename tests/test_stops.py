"""Stop requests (ctrl-C, SIGTERM) are heard at once in every phase, say what is left and keep it."""

import os
import shutil
import signal
import threading
import time

import pytest

import ueo
from helpers import run_cli
from ueo import load_checkpoint, save_checkpoint


def test_a_stop_request_during_an_evaluation_is_acted_on_at_once(tiny_vit, generated, tmp_path):
    import ueo

    train, test = generated(12, [0, 1, 2], seed=1), generated(40, [0, 1, 5], seed=2)
    settings = dict(epochs=2, batch_size=4, eval_batch_size=4, lr_prompt=0.05, lr_norm=0.05, eval_train=False)
    full = ueo.fit(tiny_vit, ["cat", "dog"], train, test=test, **settings)
    polls = {"n": 0, "training": 0}
    path = tmp_path / "checkpoint.safetensors"

    def stop():  # asked for during the last evaluation (after all 2 x 3 training steps)
        polls["n"] += 1
        return polls["n"] > 6 + 2 + 10 + 2

    with pytest.raises(ueo.TrainingInterrupted, match="during an evaluation"):
        ueo.fit(
            tiny_vit,
            ["cat", "dog"],
            train,
            test=test,
            checkpoint=lambda c: save_checkpoint(path, c),
            should_stop=stop,
            **settings,
        )
    saved = load_checkpoint(path)
    assert (saved["meta"]["epoch"], saved["meta"]["done_in_epoch"]) == (2, 3)
    resumed = ueo.fit(tiny_vit, ["cat", "dog"], train, test=test, resume=saved, **settings)
    assert resumed.metrics["adapted"] == full.metrics["adapted"]
    assert resumed.adapted.threshold == full.adapted.threshold


def test_a_second_stop_request_quits_at_once():
    from ueo.cli.stop import StopRequest

    stop = StopRequest()
    with stop.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.signum == signal.SIGINT  # heard, not acted on yet
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_ctrl_c_while_predict_decodes_says_what_is_left(bmp_run, tmp_path, capsys, monkeypatch):
    import signal

    data, run_dir = bmp_run
    copy = shutil.copytree(data, tmp_path / "data")
    once, real_add = threading.Lock(), ueo.images.reading.DECODED.add

    def decoded(n=1):  # ctrl-C, once, while the cache is built, after its first decode, before its first shard
        real_add(n)
        if once.acquire(blocking=False):
            handler = signal.getsignal(signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(6000):  # the command's handler hands SIGINT on once it has heard the stop
                if signal.getsignal(signal.SIGINT) is not handler:
                    break
                time.sleep(0.01)

    monkeypatch.setattr(ueo.images.reading.DECODED, "add", decoded)  # the documented decode hook
    args = ["predict", "--adapted", str(run_dir / "adapted.safetensors"), "--data", str(copy)]
    code, _, err = run_cli(capsys, [*args, "--out", str(tmp_path / "p"), "--quiet"])
    assert code == 130 and "stopped while decoding" in err and "incomplete" in err


def test_ctrl_c_during_export_says_what_is_left(bmp_run, tmp_path, capsys, monkeypatch):
    import signal

    import ueo.cli.apply as apply_module

    _, run_dir = bmp_run
    real = apply_module.state_and_bundle

    def loading(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(args)

    monkeypatch.setattr(apply_module, "state_and_bundle", loading)
    code, _, err = run_cli(
        capsys, ["export", "--adapted", str(run_dir / "adapted.safetensors"), "--out", str(tmp_path / "x")]
    )
    assert code == 143 and "incomplete" in err and not (tmp_path / "x" / "classifier.safetensors").exists()
