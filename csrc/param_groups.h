// The param_group dicts seen from C++: which hyper-parameters were written since the last step,
// and whole-column reads and writes for the schedulers (fusedopt/_hparams.py, Note [one truth]).
//
// Note [written groups are found by identity]: param_groups holds plain dicts (torch.compile
// needs them: Dynamo cannot trace a dict subclass there), so nothing can be told when one is
// written. The step instead compares, per group, the dict and each watched value with the
// objects it saw last (a pointer comparison per value; the snapshot keeps them alive, so an
// address cannot be reused). A scheduler writes new float objects, so every write is seen;
// a value written back unchanged may be seen as a write, which only rewrites its cell.
//
// Note [dict versions]: CPython 3.10-3.13 gives every dict a version tag that changes at every
// modification (PEP 509's ma_version_tag; deprecated in 3.12, gone in 3.14). A group whose tag
// is the one seen last was not written: its values are not looked up at all. Measured on the
// 2-core EPYC VM, a step of FusedAdamW over 1000 one-tensor groups: 157 us before this table
// design, 218 us comparing every watched value (7 dict lookups per group, ~60 ns a group: the
// dicts do not fit in cache), back to ~160 us with the tag. Where there is no tag (3.14), or a
// group holds a pair in a list (its items can change without the dict changing), the values
// are compared at every step.
#pragma once
#include <Python.h>
#include <torch/extension.h>

#include <cstdint>
#include <vector>

namespace fusedopt {

// One watched value of every group: group[key], or group[key][index] (Adam's betas).
struct WatchedEntry {
  pybind11::object key;
  Py_ssize_t index;   // -1: the value itself
  int64_t column;     // column of the hyper-parameter table; -1: an algorithm flag
  double low, high;   // a numeric write outside [low, high] (or [low, high)) goes to Python
  bool high_open;
  bool zero_flag;     // value != 0 is also an algorithm flag (SGD's momentum)
};

class GroupWatch {
 public:
  // entries: tuples (key, index or -1, column or -1, low, high, high_open, zero_flag)
  GroupWatch(const pybind11::list& entries, int64_t num_cols);
  ~GroupWatch();
  GroupWatch(const GroupWatch&) = delete;
  GroupWatch& operator=(const GroupWatch&) = delete;

  int64_t rows() const { return rows_; }
  // Remember every group's dict and watched values.
  void reset(const pybind11::list& groups);
  // Remember the current values of these rows (after Python rewrote them).
  void refresh(const pybind11::list& groups, const std::vector<int64_t>& rows);
  // Compare with what was remembered. A numeric in-range write to a table cell is written into
  // `host` (float64 [rows, num_cols], contiguous, CPU) and remembered; everything else (a flag,
  // a tensor, a value out of range, a replaced or malformed dict) leaves its whole row to
  // Python. Returns None when nothing changed, else (flat indices written, slow rows).
  pybind11::object scan(const pybind11::list& groups, const at::Tensor& host);
  // group[key][(index)] = values[i] for every group of entry `entry`, remembered, and written
  // into `host`. Nothing is written unless every value is in range; a group without the pair
  // is left for the next scan to report. Returns -1, -2 when a zero_flag value switched
  // between zero and non-zero, or the first invalid index.
  int64_t write(const pybind11::list& groups, int64_t entry, const at::Tensor& values,
                const at::Tensor& host);

 private:
  PyObject*& slot(int64_t row, int64_t k) { return snap_[row * stride() + k]; }
  int64_t stride() const { return static_cast<int64_t>(entries_.size()) + 1; }
  void forget();

  std::vector<WatchedEntry> entries_;
  std::vector<PyObject*> snap_;   // per row: the dict, then each entry's value (owned, or null)
  std::vector<uint64_t> versions_;   // per row: the dict's version tag when remembered; 0: none
  int64_t rows_ = 0;
  int64_t num_cols_;
};

// float64 [len(groups)] of group[key] (or group[key][index]); None if one is not a number.
pybind11::object read_column(const pybind11::list& groups, const pybind11::object& key,
                             Py_ssize_t index);
// group[key] (or item `index` of group[key]) = float(values[i]) for every group. Returns -1, or
// the first group that is not a dict (or has no such pair), with nothing written.
int64_t write_column(const pybind11::list& groups, const pybind11::object& key, Py_ssize_t index,
                     const at::Tensor& values);

}  // namespace fusedopt
