# Quick start: `make demo` and `make test`, from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
AS_OF  := 2025-01-10T00:00:00Z
# the re-engage series' letter (its last step, 21 days after the customer became at risk)
LETTERS_AS_OF := 2025-01-31T09:00:00Z

.PHONY: install install-test demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/engine demo --reset
	$(BIN)/engine validate
	$(BIN)/engine plan --as-of $(AS_OF)
	$(BIN)/engine run --once --as-of $(AS_OF)
	@echo
	@echo "Delivered into the file outbox (var/outbox/):"
	@echo "  $$(ls var/outbox/email 2>/dev/null | wc -l) emails in var/outbox/email/, e.g. $$(ls var/outbox/email | head -1)"
	@echo "  $$(cat var/outbox/sms/messages.jsonl 2>/dev/null | wc -l) SMS in var/outbox/sms/messages.jsonl"
	@echo "  $$(cat var/outbox/push/messages.jsonl 2>/dev/null | wc -l) web push notifications in var/outbox/push/messages.jsonl"
	@echo "A second pass at the same instant sends nothing (the ledger remembers):"
	$(BIN)/engine run --once --as-of $(AS_OF)
	@echo
	@echo "Three weeks later the re-engage series ends with a printed letter to high-value customers:"
	$(BIN)/engine run re-engage --once --as-of $(LETTERS_AS_OF)
	@echo "  $$(ls var/outbox/letter/*.pdf 2>/dev/null | wc -l) letters (PDF) and their manifests in var/outbox/letter/"

test: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile

bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) var .pytest_cache
