"""Benchmarks of scoring and serving: `python -m bench.run` (what `make bench` runs).

* `bench.machine`   what the numbers were measured on (CPU, cores, RAM, versions, load);
* `bench.detector`  the clips (synthetic slider clips and the real recordings) and a
                    small detector trained on the spot, kept as Keras model and ONNX export;
* `bench.inprocess` our pipeline per clip (decode, features, inference, total) against the
                    naive one (librosa + Keras `model.predict`) and the peer (librosa +
                    onnxruntime's default session) on the same model and clips;
* `bench.precision` the detector quantized by `training.quantize`, timed beside its fp32 self;
* `bench.floor`     the graph's multiply-adds and this machine's one-thread GEMM rates: a floor;
* `bench.load`      `asd-serve` in a subprocess on loopback: cold start, throughput and
                    latency under concurrent load (httpx + asyncio), resident memory;
* `bench.results`   what a run measured (the rows `bench.run` fills), saved and read back as JSON;
* `bench.report`    the table printed and written to BENCHMARKS.md (its in-process sections
                    drawn by `bench.report_inprocess`).
"""
