#!/usr/bin/env python3
"""PyTorch under LD_PRELOAD=libkvpager.so: allocate --gib GiB of tensors (4x a
256 MiB budget by default), compute with them, check every result exactly;
tag half of them as contexts, park them (they spill), compute again. Prints
OK and exits 0 only if every sum was right. Needs torch with CUDA."""
import argparse
import ctypes
import sys
import time

import torch


def stat(lib, key):
    buf = ctypes.create_string_buffer(1 << 20)
    lib.kvpager_stats_v1(buf, len(buf))
    for line in buf.value.decode().splitlines():
        k, _, v = line.partition("=")
        if k == key:
            return int(v.split()[0])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--tensor-mib", type=int, default=64)
    args = ap.parse_args()
    try:
        lib = ctypes.CDLL(None)
        lib.kvpager_hint_v1.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_ulonglong, ctypes.c_char_p]
        lib.kvpager_stats_v1.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
    except AttributeError:
        print("libkvpager.so is not loaded (run with LD_PRELOAD)")
        return 1
    free0, total = torch.cuda.mem_get_info()
    n = args.tensor_mib * (1 << 20) // 8  # int64 elements per tensor
    count = int(args.gib * 1024) // args.tensor_mib
    q, r = divmod(n, 997)
    base = q * (996 * 997 // 2) + r * (r - 1) // 2  # sum of k % 997 for k < n
    tensors = [torch.arange(n, device="cuda", dtype=torch.int64) % 997 + i for i in range(count)]
    free1, _ = torch.cuda.mem_get_info()
    print(f"mem_get_info: total {total >> 20} MiB, free {free0 >> 20} -> {free1 >> 20} MiB")
    if not free1 < free0:
        print("free memory did not fall as the program allocated")
        return 1

    def check(what):
        for i, t in enumerate(tensors):
            got = int(t.sum().item())
            if got != base + i * n:
                print(f"{what}: tensor {i}: sum {got} != {base + i * n}")
                sys.exit(1)

    check("first pass")
    for i, t in enumerate(tensors):
        rc = lib.kvpager_hint_v1(0, t.data_ptr(), t.numel() * t.element_size(), f"t{i}".encode())
        if rc != 0:
            print(f"tag t{i}: {rc}")
            return 1
    for i in range(0, count, 2):
        lib.kvpager_hint_v1(2, 0, 0, f"t{i}".encode())
    deadline = time.time() + 30
    while stat(lib, "pager.nvme_bytes") == 0 and time.time() < deadline:
        time.sleep(0.02)
    spilled = stat(lib, "pager.nvme_bytes")
    print(f"spilled: {spilled >> 20} MiB")
    if spilled == 0:
        print("nothing spilled within 30 s of parking: the sums after park would not test a restore")
        return 1
    check("after park")
    restores = stat(lib, "restores")
    print(f"restores: {restores}")
    if restores == 0:
        print("the kernels after park read spilled tensors, yet nothing was restored")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
