# protocaffe developer commands. `make test` and `make demo` install into .venv first when it is missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: install test test-all fuzz lint proto layer-index demo train-demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -q -m 'not slow'

test-all: $(STAMP)
	$(VPY) -m pytest -q

fuzz: $(STAMP)
	PROTOCAFFE_FUZZ=slow $(VPY) -m pytest -q tests/test_fuzz_cli.py tests/test_fuzz_runtime.py

lint: $(STAMP)
	$(VPY) -m ruff check protocaffe tests benchmarks
	$(VPY) -m ruff format --check protocaffe tests benchmarks

proto: $(STAMP)
	$(VPY) -m grpc_tools.protoc -Iprotos --python_out=protocaffe/proto --pyi_out=protocaffe/proto protos/caffe.proto

# Which layer file registers each type (protocaffe/layers/_index.py), after adding a layer type.
layer-index: $(STAMP)
	$(VPY) -c "from protocaffe.proto import schema; schema._builtin_numbers = {}; from protocaffe.layers import index_source; open('protocaffe/layers/_index.py', 'w').write(index_source())"

demo: $(STAMP)
	$(VENV)/bin/protocaffe compile models/fcn8s.prototxt --input data=1,3,500,500
	$(VENV)/bin/protocaffe run models/fcn8s.prototxt --input examples/scene.png --labels examples/voc_classes.txt --output demo-out --seed 0

# The FCN workflow end to end on a synthetic set: data, bilinear init, train, score, pictures.
TD := demo-train
train-demo: $(STAMP)
	rm -rf $(TD)
	$(VPY) -m protocaffe.fcn.synthetic $(TD)/data
	$(VENV)/bin/protocaffe surgery interp models/fcn_demo_trainval.prototxt -o $(TD)/init.caffemodel --layers 'up*'
	$(VENV)/bin/protocaffe train models/fcn_demo_solver.prototxt --weights $(TD)/init.caffemodel --log $(TD)/train.jsonl
	$(VENV)/bin/protocaffe plot $(TD)/train.jsonl -o $(TD)/loss.png
	$(VENV)/bin/protocaffe score models/fcn_demo_deploy.prototxt --weights $(TD)/snapshots/fcn_demo_iter_200.caffemodel --images $(TD)/data/val.txt --labels $(TD)/data/val_labels.txt --classes $(TD)/data/classes.txt --confusion $(TD)/confusion.png
	$(VENV)/bin/protocaffe run models/fcn_demo_deploy.prototxt --weights $(TD)/snapshots/fcn_demo_iter_200.caffemodel --input $(TD)/data/images/val_000[0-3].png --labels $(TD)/data/classes.txt --output $(TD)/seg

bench: $(STAMP)
	$(VPY) benchmarks/bench_parse.py
	$(VPY) benchmarks/bench_compile.py
	$(VPY) benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out demo-train .pytest_cache
