"""End-to-end training benchmark: see fusedopt/bench/e2e.py (also ``fusedopt-bench e2e``).

    python bench/train_e2e.py --tiny                          # CPU mode, seconds
    python bench/train_e2e.py --precision bf16 --json e2e.json --plot e2e.png   # on a GPU
"""
from fusedopt.bench.e2e import main

if __name__ == "__main__":
    main()
