"""Exact 2-NN (the memorization audit's search): ours vs a broadcast loop vs faiss IndexFlatL2.

    python benchmarks/nn_speed.py             # 10,000 queries vs 50,000 references, D = 3,072, float32
    python benchmarks/nn_speed.py --quick     # 1,000 queries vs 10,000 references
    python benchmarks/nn_speed.py --device cuda   # ours and the loop on the GPU; faiss stays on the CPU

* ours:  ``kfm.nearest_neighbors(samples, train, 2)`` (chunked GEMM screening, exact float64
         re-ranking of the candidates, certified).
* loop:  ``torch.norm(s − X, dim=1)`` per sample, then the two smallest (how the paper's
         reference code computes F_mem); timed on ``--loop-queries`` samples and extrapolated
         per query (its cost is exactly linear in the number of queries).
* faiss: ``faiss.IndexFlatL2`` (built once, build time reported apart), ``search(samples, 2)``,
         when faiss is installed; its float32 distances are not re-ranked.

Inputs: references uniform in [−1, 1]^D; queries are half noisy copies of references (these
have a clear nearest neighbour) and half fresh uniform points. Agreement of the neighbour
indices with the loop (on its subset) and with faiss is printed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import interleaved_rounds

import kinetic_fm as kfm


def median_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def loop_2nn(samples, train):
    d = torch.empty(samples.shape[0], 2, device=samples.device)
    i = torch.empty(samples.shape[0], 2, dtype=torch.int64, device=samples.device)
    for q in range(samples.shape[0]):
        dist = torch.norm(samples[q] - train, dim=1)
        top = torch.topk(dist, 2, largest=False)
        d[q], i[q] = top.values, top.indices
    return d, i


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-queries", type=int, default=20)
    parser.add_argument("--dim", type=int, default=3_072)
    parser.add_argument("--device", default="cpu", help="where ours and the loop run (faiss: CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    n_query, n_ref = (1_000, 10_000) if args.quick else (10_000, 50_000)
    dim = args.dim
    g = torch.Generator().manual_seed(0)
    train = torch.rand(n_ref, dim, generator=g) * 2 - 1
    half = n_query // 2
    copies = train[torch.randint(0, n_ref, (half,), generator=g)] + 0.05 * torch.randn(half, dim, generator=g)
    samples = torch.cat([copies, torch.rand(n_query - half, dim, generator=g) * 2 - 1])
    on_device = (samples.to(device), train.to(device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"exact 2-NN, {n_query} queries vs {n_ref} references, D={dim}, float32, "
          f"torch {torch.__version__}, {device} ({where})")

    from kinetic_fm import gemm

    if device.type == "cpu":
        print(f"float32 screening GEMM on this CPU: {gemm.cpu_gemm()} (timed choice; see kinetic_fm.gemm)")

    def ours_with(blas):
        def run():
            gemm.CPU_GEMM = blas
            try:
                result = kfm.nearest_neighbors(*on_device, 2)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return result
            finally:
                gemm.CPU_GEMM = "auto"
        return run

    contenders = {"ours": ours_with("auto")}
    if device.type == "cpu":                      # on a GPU there is one BLAS
        contenders["ours, torch BLAS only"] = ours_with("torch")
    build_s = None
    try:
        import faiss
    except ImportError:
        print("faiss: not installed (pip install faiss-cpu)")
    else:
        faiss.omp_set_num_threads(torch.get_num_threads())
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(dim)
        index.add(train.numpy())
        build_s = time.perf_counter() - t0
        q_np = samples.numpy()
        contenders["faiss"] = lambda: index.search(q_np, 2)

    # rounds alternate the contenders, so load drifts hit all alike; ratios are per round
    times, results = interleaved_rounds(contenders, args.repeats)
    ours, ours_s = results["ours"], statistics.median(times["ours"])
    print(f"ours:  {ours_s:8.2f} s   (median of {args.repeats}; rechecked in float64: {ours.rechecked})")
    if "ours, torch BLAS only" in times:
        torch_only = statistics.median(times["ours, torch BLAS only"])
        same = torch.equal(results["ours, torch BLAS only"].indices, ours.indices)
        print(f"ours with torch's BLAS only: {torch_only:8.2f} s (identical results: {same})")

    q = args.loop_queries
    loop_s, (loop_d, loop_i) = median_time(lambda: loop_2nn(on_device[0][:q], on_device[1]), 1)
    loop_total = loop_s / q * n_query
    agree = (loop_i == ours.indices[:q]).all(dim=1).float().mean().item()
    print(f"loop:  {loop_total:8.1f} s   (extrapolated from {q} queries, {loop_s / q * 1e3:.0f} ms/query); "
          f"ours is {loop_total / ours_s:.1f}x faster; indices agree on {agree:.0%} of the subset")

    if build_s is None:
        return
    faiss_s = statistics.median(times["faiss"])
    ratios = [f / o for f, o in zip(times["faiss"], times["ours"])]
    agree = (torch.from_numpy(results["faiss"][1]) == ours.indices.cpu()).all(dim=1).float().mean().item()
    print(f"faiss (CPU): {faiss_s:8.2f} s   (+ {build_s:.2f} s index build); ours / faiss speed = "
          f"{statistics.median(ratios):.2f}x (median of per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"indices agree on {agree:.2%} of queries")
    if "ours, torch BLAS only" in times:
        ratios_torch = [f / o for f, o in zip(times["faiss"], times["ours, torch BLAS only"])]
        print(f"       ours with torch's BLAS only / faiss speed = {statistics.median(ratios_torch):.2f}x")


if __name__ == "__main__":
    main()
