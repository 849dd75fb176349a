"""End-to-end training benchmark: see fusedopt/bench/e2e.py (also ``fusedopt-bench e2e``).

    python bench/train_e2e.py --tiny --dry                    # CPU mode, every route, a minute or two
    python bench/train_e2e.py --precision bf16 --out bench/results/<gpu>/e2e   # on a GPU
"""
from fusedopt.bench.e2e import main

if __name__ == "__main__":
    main()
