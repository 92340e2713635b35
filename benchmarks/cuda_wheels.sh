#!/usr/bin/env bash
# Makes .whl/ (git-ignored), what benchmarks/cuda_session.sh installs on a lent GPU machine: the
# wheels its image lacks (it reaches no registry; Python 3.12 there), and pycocoevalcap's Python
# scorers without its 100 MB of Java jars. Run on the developer's machine, in the repository root,
# with clipkit's environment active; then name .whl in the device call's carry.
set -euo pipefail
mkdir -p .whl/site
grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info && echo "/.whl/" >> .git/info/exclude; }
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    open_clip_torch==3.3.0 webdataset==1.0.2 braceexpand==0.1.7 hydra-core==1.3.2 omegaconf==2.3.0 \
    ftfy==6.3.1 wcwidth==0.2.13 simplejpeg soundfile cffi pycparser py-spy
python -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # published as source only
scorers=$(python -c "import pycocoevalcap; print(list(pycocoevalcap.__path__)[0])")  # a namespace package
for file in bleu/bleu.py bleu/bleu_scorer.py cider/cider.py cider/cider_scorer.py rouge/rouge.py \
    meteor/meteor.py tokenizer/ptbtokenizer.py; do
    mkdir -p ".whl/site/pycocoevalcap/$(dirname "$file")"
    cp "$scorers/$file" ".whl/site/pycocoevalcap/$file"
done
du -sh .whl
