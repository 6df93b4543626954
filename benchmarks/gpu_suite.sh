#!/usr/bin/env bash
# One device call per part, each well inside the 10-minute limit; full logs and JSON land in $OUT.
#   bash benchmarks/gpu_suite.sh plugin      # issue 6: the plugin's AOT PTX launched as TensorRT would
#   bash benchmarks/gpu_suite.sh onnx1b      # issue 6: full-size student ONNX + onnxruntime parity, 2 frames
#   bash benchmarks/gpu_suite.sh fp8         # issue 5: FP8 GEMMs, bf16-SLA vs FP8-SLA latency, real vs fake FP8
#   bash benchmarks/gpu_suite.sh distill     # issue 5: distillation closes the gap (VGGT-1B size and tiny)
#   bash benchmarks/gpu_suite.sh ort13       # issue 13: FP8 ONNX on the image's onnxruntime (1.30), tiny, fp32 + bf16
#   bash benchmarks/gpu_suite.sh runtime     # issue 10: GPU tests of TorchRuntime, its parity and SLA; SDPA backends
#   bash benchmarks/gpu_suite.sh runtime-parity  # issue 10: five runtimes of the VGGT-1B student vs the student
#                                            # (parity reports; needs ModelOpt: carry .whl)
#   bash benchmarks/gpu_suite.sh profile     # issue 10: where the student's time goes (kernel categories)
#   bash benchmarks/gpu_suite.sh kernels     # issue 10: one VGGT-1B block bf16 vs FP8, the SLA classification kernel,
#                                            # SLA with 8-bit Q K^T
#   BENCH_FRAMES=2,8,32,100 BENCH_ARGS="--reps 10" bash benchmarks/gpu_suite.sh bench   # issue 9/10: lite3r bench
#                                            # (BENCH_NAME=x writes $OUT/x and $OUT/x.log instead of bench)
#   BENCH_MODEL=da3-large BENCH_FRAMES=2,8,32,100 BENCH_ARGS="--size 504x504" bash benchmarks/gpu_suite.sh bench  # 14
#   bash benchmarks/gpu_suite.sh distill-ddp # issue 15: 1 vs 2 GPUs, DDP and FSDP2 (nvidia-h200-x2, < 8 min)
#   bash benchmarks/gpu_suite.sh teacher     # issue 12: train vggt-small (5 min), then the SLA/FP8 experiment on it
#                                            # (about 3 min); $OUT/teacher holds the weights to install;
#                                            # TEACHER_ARGS="--lr 1e-3 --images-per-step 32" changes the recipe
#   TEACHER_MINUTES=9 bash benchmarks/gpu_suite.sh teacher-train   # issue 12: a longer run alone in one call;
#   TEACHER_WEIGHTS=<its $OUT/teacher, carried> bash benchmarks/gpu_suite.sh teacher-eval   # its experiment next call
#   bash benchmarks/gpu_suite.sh pt2         # issue 11: the VGGT-1B student as model.pt2, then SLA kernel tests
#   bash benchmarks/gpu_suite.sh pt2-probe   # issue 11: a two-Linear CUDA package, loaded as a package and as a shared object
#   bash benchmarks/gpu_suite.sh ... pack    # last: more than 8 files under $OUT become one results.tar.gz
# ModelOpt / Polygraphy are not on the GPU image: carry them as wheels in .whl (see docs/gpu.md).
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # NVLink multicast stays off
if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site/modelopt ]; then  # parts on two GPUs share one install
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH=src:/tmp/site
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# Files come back at most 16 MiB each: the 19.7 MB teacher weights travel as .part0/.part1, which
# scripts/install_teacher.py (and teacher-eval) join; the card's SHA-256 checks the result.
train_teacher() {  # work folder, minutes
  python3 -m lite3r.cli train-teacher --minutes "$2" --no-resume ${TEACHER_ARGS:-} --out "$1" \
    && mkdir -p "$OUT/teacher" && cp "$1/vggt-small.json" "$OUT/teacher/" \
    && split -b 10M -d -a 1 "$1/vggt-small.safetensors" "$OUT/teacher/vggt-small.safetensors.part"
}
teacher_experiment() {  # work folder with vggt-small.safetensors, its card and log.jsonl
  python3 benchmarks/bench_teacher.py --weights "$1" --train-log "$1/log.jsonl" --minutes 2.75 ${TEACHER_EVAL_ARGS:-} \
    --out "$OUT/bench"
}
for part in "$@"; do
  echo "=== $part ==="
  case "$part" in
    plugin) { python3 scripts/check_plugin_ptx_gpu.py \
              && python3 scripts/check_plugin_ptx_gpu.py --dtype fp16 --head-dim 128 --block-q 128; } 2>&1 \
              | tee "$OUT/plugin.log" ;;
    onnx1b) python3 scripts/export_vggt1b_parity.py --out /tmp/onnx1b 2>&1 | tee "$OUT/onnx1b.log"
            cp /tmp/onnx1b/parity.json "$OUT/onnx1b_parity.json" ;;
    fp8) python3 benchmarks/bench_fp8.py --out "$OUT/fp8_vggt1b.json" 2>&1 | tee "$OUT/fp8.log" ;;
    distill) { python3 benchmarks/bench_distill.py --steps 60 --out "$OUT/distill_vggt1b.json" \
               && python3 benchmarks/bench_distill.py --model vggt-tiny --views 4 --size 112 --steps 100 \
                    --out "$OUT/distill_tiny.json"; } 2>&1 | tee "$OUT/distill.log" ;;
    ort13) { python3 -c "from lite3r.parity.runners import probe_onnxruntime as p; print('onnxruntime', p())" \
             && for precision in fp32 bf16; do python3 -c "from lite3r.cli import export_main; export_main()" \
                  vggt-tiny --fp8 --target onnx --precision $precision --device cuda --out "$OUT/ort13-$precision" \
                  || exit 1; done; } 2>&1 | tee "$OUT/ort13.log"
           head -1 "$OUT"/ort13-*/parity.md ;;
    runtime) { python3 -m pytest -q -x -p no:cacheprovider tests/deploy/test_torch_runtime.py tests/sla/test_sla_gpu.py \
                 tests/parity/test_parity.py::test_runtime_is_held_to_the_student_as_it_runs_it \
               && python3 benchmarks/bench_sdpa_backends.py --frames 2 8 32; } 2>&1 | tee "$OUT/runtime.log" ;;
    runtime-parity) python3 benchmarks/runtime_parity.py --out /tmp/runtime_parity 2>&1 | tee "$OUT/runtime_parity.log"
                    tar czf "$OUT/runtime_parity.tgz" -C /tmp runtime_parity ;;
    pt2) { python3 benchmarks/bench_pt2.py --out "$OUT/pt2"
           python3 -m pytest -q -p no:cacheprovider tests/sla/test_sla_gpu.py; } 2>&1 | tee "$OUT/pt2.log" ;;
    pt2-probe) python3 scripts/pt2_load_probe.py --device cuda --cases mlp \
                 --loads fresh so 2>&1 | tee "$OUT/pt2_probe.log" ;;
    profile) python3 benchmarks/profile_runtime.py --frames 2 8 32 --out "$OUT/profile.json" 2>&1 \
               | tee "$OUT/profile.log" ;;
    kernels) { python3 benchmarks/bench_block_fp8.py --frames 8 32 --variants bf16 fp8 --out "$OUT/block_fp8.json" \
               && python3 benchmarks/bench_classify.py --out "$OUT/classify.json" \
               && python3 benchmarks/bench_qk8.py --out "$OUT/qk8.json"; } 2>&1 | tee "$OUT/kernels.log" ;;
    bench) name=${BENCH_NAME:-bench}  # BENCH_NAME keeps two bench parts on two GPUs apart
           python3 -m lite3r.cli bench --model "${BENCH_MODEL:-vggt}" --frames "$BENCH_FRAMES" $BENCH_ARGS --out "$OUT/$name" \
             2>&1 | tee "$OUT/$name.log" ;;
    distill-ddp) python3 benchmarks/bench_distill_ddp.py --out "$OUT/distill_ddp.json" 2>&1 \
                   | tee "$OUT/distill_ddp.log" ;;
    teacher) work=$(mktemp -d /tmp/teacher.XXXX)  # two parts on two GPUs of one machine do not collide
             { train_teacher "$work" "${TEACHER_MINUTES:-5}" && teacher_experiment "$work"; } 2>&1 \
               | tee "$OUT/teacher.log" ;;
    teacher-train) work=$(mktemp -d /tmp/teacher.XXXX)
                   train_teacher "$work" "${TEACHER_MINUTES:-9}" 2>&1 | tee "$OUT/teacher.log"
                   cp "$work/log.jsonl" "$OUT/teacher/" ;;
    teacher-eval) work=$(mktemp -d /tmp/teacher.XXXX)  # the weights of a teacher-train call, as it returned them
                  cp "$TEACHER_WEIGHTS/vggt-small.json" "$TEACHER_WEIGHTS/log.jsonl" "$work/" \
                    && cat "$TEACHER_WEIGHTS"/vggt-small.safetensors.part* > "$work/vggt-small.safetensors" \
                    && teacher_experiment "$work" 2>&1 | tee "$OUT/teacher_eval.log" ;;
    pack) n=$(find "$OUT" -type f | wc -l)  # a call returns at most 8 files: one archive instead, when more
          if [ "$n" -gt 8 ]; then tar czf /tmp/results.tar.gz -C "$OUT" . && find "$OUT" -mindepth 1 -delete \
            && mv /tmp/results.tar.gz "$OUT/" && echo "packed $n files into results.tar.gz"; fi ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
