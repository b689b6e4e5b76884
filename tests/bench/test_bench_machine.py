from __future__ import annotations

from edgevis.bench.machine import bench_parser, machine_id


def test_bench_parser_shared_options():
    doc = "Benchmark X against Y.\n\nDetails that stay out of --help."
    p = bench_parser(doc, threads="1,2", reps=15, warmup=3, out="reports")
    a = p.parse_args([])
    assert (a.threads, a.reps, a.warmup, a.out) == ("1,2", 15, 3, "reports")  # a comma list stays a string
    assert p.description == "Benchmark X against Y."
    b = bench_parser(doc, threads=2).parse_args(["--threads", "4"])
    assert b.threads == 4 and not hasattr(b, "reps")  # an int default parses ints; options not asked for are absent


def test_machine_id_is_file_name_safe():
    assert machine_id({"cpu": "Intel(R) Xeon(R) Processor", "cores": 2}) == "intel-r-xeon-r-processor-2c"
    assert machine_id({"cpu": "x", "gpu": "NVIDIA H100 80GB HBM3", "cores": 16}) == "nvidia-h100-80gb-hbm3-16c"
