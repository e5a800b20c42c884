# Two commands on a fresh machine:  make demo  |  make test
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean web bytecode

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 (apt-get install python3.11 python3.11-venv)" >&2; exit 2; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,mlflow,flower]'
	@touch $(STAMP)

# An editable install leaves fedhive's own modules uncompiled; where PYTHONDONTWRITEBYTECODE is
# set (as on CI machines), every process then compiled some 130 of them again, 0.15-0.2 s a start.
# Up-to-date files are skipped, so this costs a fraction of a second when nothing changed.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 src

# The dashboard's chart library comes from the npm registry at build time (package-lock.json).
web: src/fedhive/web/static/vendor/.built
src/fedhive/web/static/vendor/.built: src/fedhive/web/package-lock.json
	./scripts/build-web.sh
	@touch $@

demo: $(STAMP) bytecode
	$(BIN)/fedhive simulate --dataset digits --model simple-dnn:128,64 --clients 10 --rounds 20 \
		--partition dirichlet:0.5 --epochs 1 --batch-size 32 --lr 0.05 --seed 0 --out runs/demo
	@echo "results of this run: runs/demo/$$(cat runs/demo/latest)/ (each run gets a folder of its own)"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) web bytecode
	./scripts/ensure-services.sh
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
