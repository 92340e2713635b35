#!/usr/bin/env bash
# One call on a lent GPU machine (see the device tool): install what its image lacks from carried
# wheels (.whl/, made on the developer's machine by benchmarks/cuda_wheels.sh; the GPU machine
# reaches no registry), then run the phases named as arguments, logging each under $OUT:
#   tests     pytest -m cuda (tests/gpu and the CUDA cases of the unit tests), 4 at a time
#   compile_tests, decode_tests  the CUDA cases of tests/unit/test_compile.py, test_device_decode.py alone
#   step_b16, step_b32  benchmarks/train_step_vs_open_clip.py, eager, bf16: ViT-B/16 @256, ViT-B/32 @512
#   compiled_b16, compiled_b32  the same with --compile
#   text24_b32  ViT-B/32 @512 with clipkit's captions cut to 24 positions (what data.bucket_pool
#             reached on long-tailed captions; open_clip pads to 77)
#   fsdp_b16  the ViT-B/16 step with clipkit under FSDP2 on one process (open_clip in DDP)
#   fsdp_bf16w_b16, fsdp_bf16w_compiled_b16  the same with trainer.fsdp.autocast=false (the step in
#             FSDP's bf16 weights, no autocast), eager and compiled
#   profile_b16  one eager ViT-B/16 @256 run of each with --profile: operator tables in $OUT/profile
#   pipeline  benchmarks/train_pipeline.py on JPEG shards, all CPU cores as data workers (pipeline_b32: ViT-B/32 only)
#   pipeline_workers  ViT-B/32 @512's pipeline with 16, 14 and 12 workers: do cores left to the
#             training process's own threads remove the slow windows? Each run also samples the
#             trainer and its workers with py-spy (raw stacks in $OUT/py-spy-N-workers)
#   pipeline_gpu_decode  the same with data.decode_device=cuda (nvJPEG), and with 2 workers only
#   zeroshot  benchmarks/zeroshot_classifier_vs_open_clip.py: ImageNet's 1,000 classes x 80 prompts, ViT-B/32, bf16
# REPEATS (default 2): alternating runs of each framework in a step phase; STEP_TIMEOUT (400 s) bounds one.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m pip install -q --no-index --no-deps --no-build-isolation .whl/*.whl 2>&1 | tail -3
cp -r .whl/site/pycocoevalcap "$(python3 -c 'import site; print(site.getsitepackages()[0])')/"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -c "import torch, open_clip, timm, clipkit; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
step() {  # model batch extra-args...
    local model=$1 batch=$2; shift 2
    timeout "${STEP_TIMEOUT:-400}" python3 benchmarks/train_step_vs_open_clip.py --device cuda --precision bf16 --model "$model" \
        --batch "$batch" --steps 20 --out "$OUT/step.jsonl" "$@" 2>&1 | tee -a "$OUT/step.log"
}
for phase in "$@"; do
    echo "=== $phase $(date +%T)"
    case $phase in
        tests) timeout 420 python3 -m pytest -m cuda -n 4 -v --durations=0 -p no:cacheprovider tests/gpu \
                   tests/unit/test_compile.py tests/unit/test_device_decode.py tests/unit/test_no_host_sync.py \
                   2>&1 | tee "$OUT/tests.log" | tail -40 ;;
        compile_tests) timeout 270 python3 -m pytest -m cuda -v --durations=0 -p no:cacheprovider tests/unit/test_compile.py \
                   2>&1 | tee "$OUT/compile_tests.log" | tail -8 ;;
        decode_tests) timeout 120 python3 -m pytest -m cuda -v -p no:cacheprovider tests/unit/test_device_decode.py \
                   2>&1 | tee "$OUT/decode_tests.log" | tail -5 ;;
        zeroshot) timeout "${STEP_TIMEOUT:-400}" python3 benchmarks/zeroshot_classifier_vs_open_clip.py --device cuda \
                   --precision bf16 --classes 1000 --repeats "${REPEATS:-2}" 2>&1 | tee -a "$OUT/zeroshot.log" ;;
        step_b16) step vit_b16 256 --repeats "${REPEATS:-2}" ;;
        step_b32) step vit_b32 512 --repeats "${REPEATS:-2}" ;;
        text24_b32) step vit_b32 512 --repeats "${REPEATS:-2}" --text-pad-multiple 24 ;;
        compiled_b16) step vit_b16 256 --repeats "${REPEATS:-2}" --compile ;;
        compiled_b32) step vit_b32 512 --repeats "${REPEATS:-2}" --compile ;;
        fsdp_b16) step vit_b16 256 --repeats "${REPEATS:-2}" --parallel fsdp --processes 1 ;;
        fsdp_bf16w_b16) step vit_b16 256 --repeats "${REPEATS:-2}" --parallel fsdp --processes 1 \
                   --set trainer.fsdp.autocast=false ;;
        fsdp_bf16w_compiled_b16) step vit_b16 256 --repeats "${REPEATS:-2}" --parallel fsdp --processes 1 \
                   --set trainer.fsdp.autocast=false --compile ;;
        profile_b16) timeout 300 python3 benchmarks/train_step_vs_open_clip.py --device cuda --precision bf16 \
                   --model vit_b16 --batch 256 --steps 10 --profile "$OUT/profile" 2>&1 | tee -a "$OUT/profile.log" ;;
        pipeline | pipeline_b32) models=("vit_b32 512" "vit_b16 256")
                  [ "$phase" = pipeline_b32 ] && models=("vit_b32 512")
                  for model_batch in "${models[@]}"; do
                      set -- $model_batch
                      timeout 280 python3 benchmarks/train_pipeline.py --model "$1" --batch "$2" \
                          --shards /tmp/photos --steps 80 2>&1 | tee -a "$OUT/pipeline.log"
                  done ;;
        pipeline_workers) for workers in 16 14 12; do
                      timeout 190 python3 benchmarks/train_pipeline.py --model vit_b32 --batch 512 --workers $workers \
                          --shards /tmp/photos --steps 80 --py-spy "$OUT/py-spy-$workers-workers" 2>&1 | tee -a "$OUT/pipeline.log"
                  done ;;
        pipeline_gpu_decode) for workers in 16 2; do
                      for decode in cpu cuda; do
                          timeout 200 python3 benchmarks/train_pipeline.py --model vit_b32 --batch 512 --workers $workers \
                              --decode-device $decode --shards /tmp/photos --steps 80 2>&1 | tee -a "$OUT/pipeline.log"
                      done
                  done ;;
    esac
done
echo "=== done $(date +%T)"
