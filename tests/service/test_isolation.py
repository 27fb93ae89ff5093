"""The service never imports TensorFlow or the training package."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_serving_imports_neither_tensorflow_nor_training(models_dir, real_recordings):
    clip = real_recordings / "mimii-8ch" / "slider_normal.wav"
    script = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from service.config import Settings
        from service.main import create_app

        app = create_app(Settings(models_dir={str(models_dir)!r}))
        with TestClient(app) as client:
            assert app.state.registry.wait(120)
            response = client.post("/v1/score", files={{"file": open({str(clip)!r}, "rb")}})
            assert response.status_code == 200, response.text
        banned = ("tensorflow", "keras", "training", "tf2onnx")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in banned)
        print("LEAKED", leaked)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LEAKED []" in result.stdout, result.stdout[-2000:]
