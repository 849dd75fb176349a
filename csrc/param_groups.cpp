// Note [written groups are found by identity] (param_groups.h). Every function here runs with
// the GIL held (pybind11 calls) and raises no C++ exception for bad user input: a malformed
// group is reported back to Python, which raises the error naming the group and the key.
#include "param_groups.h"

#include <algorithm>
#include <cmath>

namespace py = pybind11;

namespace fusedopt {
namespace {

constexpr size_t kMaxEntries = 16;

// Note [dict versions] (param_groups.h): the dict's version tag, or 0 where there is none.
uint64_t version_of(PyObject* group) {
#if PY_VERSION_HEX < 0x030E0000
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  return PyDict_Check(group) ? reinterpret_cast<PyDictObject*>(group)->ma_version_tag : 0;
#pragma GCC diagnostic pop
#else
  (void)group;
  return 0;
#endif
}

// group[key] (borrowed), or nullptr when `group` is not a dict or has no `key`.
PyObject* value_of(PyObject* group, PyObject* key) {
  if (!PyDict_Check(group)) return nullptr;
  PyObject* v = PyDict_GetItemWithError(group, key);
  if (v == nullptr) PyErr_Clear();
  return v;
}

// Item `index` of a tuple or list (borrowed), the value itself for index -1, else nullptr.
PyObject* item_of(PyObject* v, Py_ssize_t index) {
  if (v == nullptr || index < 0) return v;
  if (PyTuple_Check(v)) return index < PyTuple_GET_SIZE(v) ? PyTuple_GET_ITEM(v, index) : nullptr;
  if (PyList_Check(v)) return index < PyList_GET_SIZE(v) ? PyList_GET_ITEM(v, index) : nullptr;
  return nullptr;
}

// A Python float (or subclass) or int (not bool) as a double.
bool as_number(PyObject* v, double* out) {
  if (v == nullptr) return false;
  if (PyFloat_Check(v)) {
    *out = PyFloat_AS_DOUBLE(v);
    return true;
  }
  if (PyLong_CheckExact(v)) {
    const double x = PyLong_AsDouble(v);
    if (x == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    *out = x;
    return true;
  }
  return false;
}

bool in_range(const WatchedEntry& e, double x) {
  return x >= e.low && (e.high_open ? x < e.high : x <= e.high);   // false for NaN
}

// A copy of the tuple or list `pair` with item `index` replaced by `value` (new reference), or
// nullptr when `pair` is not a tuple or list that long.
PyObject* replaced(PyObject* pair, Py_ssize_t index, PyObject* value) {
  const bool tuple = pair != nullptr && PyTuple_Check(pair);
  if (pair == nullptr || (!tuple && !PyList_Check(pair))) return nullptr;
  const Py_ssize_t n = tuple ? PyTuple_GET_SIZE(pair) : PyList_GET_SIZE(pair);
  if (index >= n) return nullptr;
  PyObject* out = tuple ? PyTuple_New(n) : PyList_New(n);
  if (out == nullptr) throw py::error_already_set();
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = i == index ? value : (tuple ? PyTuple_GET_ITEM(pair, i)
                                                 : PyList_GET_ITEM(pair, i));
    Py_INCREF(item);
    if (tuple) {
      PyTuple_SET_ITEM(out, i, item);
    } else {
      PyList_SET_ITEM(out, i, item);
    }
  }
  return out;
}

// group[key] = value, or group[key][index] = value through a new tuple/list. False when the
// group or its pair is malformed (nothing written).
bool store(PyObject* group, PyObject* key, Py_ssize_t index, PyObject* value) {
  if (!PyDict_Check(group)) return false;
  if (index >= 0) {
    PyObject* pair = replaced(value_of(group, key), index, value);
    if (pair == nullptr) return false;
    const int rc = PyDict_SetItem(group, key, pair);
    Py_DECREF(pair);
    if (rc != 0) throw py::error_already_set();
    return true;
  }
  if (PyDict_SetItem(group, key, value) != 0) throw py::error_already_set();
  return true;
}

void check_table(const at::Tensor& host, int64_t rows, int64_t cols) {
  TORCH_CHECK(host.device().is_cpu() && host.scalar_type() == at::kDouble &&
                  host.is_contiguous() && host.dim() == 2 && host.size(0) == rows &&
                  host.size(1) == cols,
              "host table must be a contiguous float64 CPU tensor [", rows, ", ", cols, "]");
}

}  // namespace

GroupWatch::GroupWatch(const py::list& entries, int64_t num_cols) : num_cols_(num_cols) {
  TORCH_CHECK(entries.size() <= kMaxEntries, "at most ", kMaxEntries, " watched keys");
  for (const py::handle& h : entries) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(h);
    py::str key = t[0].cast<py::str>();
    PyUnicode_InternInPlace(&key.ptr());
    entries_.push_back(WatchedEntry{key, t[1].cast<Py_ssize_t>(), t[2].cast<int64_t>(),
                                    t[3].cast<double>(), t[4].cast<double>(), t[5].cast<bool>(),
                                    t[6].cast<bool>()});
  }
}

GroupWatch::~GroupWatch() { forget(); }

void GroupWatch::forget() {
  for (PyObject* p : snap_) Py_XDECREF(p);
  snap_.clear();
  versions_.clear();
  rows_ = 0;
}

void GroupWatch::reset(const py::list& groups) {
  forget();
  rows_ = static_cast<int64_t>(groups.size());
  snap_.assign(rows_ * stride(), nullptr);
  versions_.assign(rows_, 0);
  std::vector<int64_t> all(rows_);
  for (int64_t r = 0; r < rows_; ++r) all[r] = r;
  refresh(groups, all);
}

void GroupWatch::refresh(const py::list& groups, const std::vector<int64_t>& rows) {
  const int64_t n = std::min<int64_t>(rows_, static_cast<int64_t>(groups.size()));
  for (int64_t r : rows) {
    if (r < 0 || r >= n) continue;
    PyObject* group = PyList_GET_ITEM(groups.ptr(), r);
    uint64_t version = version_of(group);
    for (int64_t k = 0; k < stride(); ++k) {
      PyObject* container = k == 0 ? nullptr : value_of(group, entries_[k - 1].key.ptr());
      if (k > 0 && entries_[k - 1].index >= 0 && container != nullptr &&
          !PyTuple_Check(container)) {
        version = 0;   // a list's items change without the dict changing
      }
      PyObject* v = k == 0 ? group : item_of(container, entries_[k - 1].index);
      Py_XINCREF(v);
      Py_XDECREF(slot(r, k));
      slot(r, k) = v;
    }
    versions_[r] = version;
  }
}

py::object GroupWatch::scan(const py::list& groups, const at::Tensor& host) {
  check_table(host, rows_, num_cols_);
  double* table = host.data_ptr<double>();
  const int64_t n = std::min<int64_t>(rows_, static_cast<int64_t>(groups.size()));
  const int64_t num_entries = static_cast<int64_t>(entries_.size());
  std::vector<int64_t> flat, slow;
  struct Pending {
    int64_t k;
    double x;
    PyObject* v;
  } pending[kMaxEntries];
  for (int64_t r = 0; r < n; ++r) {
    PyObject* group = PyList_GET_ITEM(groups.ptr(), r);
    bool is_slow = group != slot(r, 0);
    const uint64_t version = version_of(group);
    if (!is_slow && version != 0 && version == versions_[r]) continue;   // Note [dict versions]
    bool keeps_version = version != 0;
    size_t num_pending = 0;
    PyObject* last_key = nullptr;   // Adam's betas[0] and betas[1] share one lookup
    PyObject* last_value = nullptr;
    for (int64_t k = 0; k < num_entries && !is_slow; ++k) {
      const WatchedEntry& e = entries_[k];
      if (e.key.ptr() != last_key) {
        last_key = e.key.ptr();
        last_value = value_of(group, last_key);
        if (e.index >= 0 && last_value != nullptr && !PyTuple_Check(last_value)) {
          keeps_version = false;
        }
      }
      PyObject* v = item_of(last_value, e.index);
      PyObject* old = slot(r, k + 1);
      if (v == old) continue;
      double x = 0, was = 0;
      if (e.column < 0 || !as_number(v, &x) || !as_number(old, &was) || !in_range(e, x) ||
          (e.zero_flag && (x == 0) != (was == 0))) {
        is_slow = true;
      } else {
        pending[num_pending++] = Pending{k, x, v};
      }
    }
    if (is_slow) {
      slow.push_back(r);
      continue;
    }
    versions_[r] = keeps_version ? version : 0;   // every watched value is now remembered
    for (size_t i = 0; i < num_pending; ++i) {
      const Pending& p = pending[i];
      const int64_t cell = r * num_cols_ + entries_[p.k].column;
      table[cell] = p.x;
      Py_INCREF(p.v);
      Py_XDECREF(slot(r, p.k + 1));
      slot(r, p.k + 1) = p.v;
      flat.push_back(cell);
    }
  }
  if (flat.empty() && slow.empty()) return py::none();
  return py::make_tuple(py::cast(flat), py::cast(slow));
}

int64_t GroupWatch::write(const py::list& groups, int64_t entry, const at::Tensor& values,
                          const at::Tensor& host) {
  check_table(host, rows_, num_cols_);
  TORCH_CHECK(entry >= 0 && entry < static_cast<int64_t>(entries_.size()) &&
                  entries_[entry].column >= 0,
              "entry ", entry, " is not a table column");
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kDouble &&
                  values.is_contiguous() && values.numel() == rows_ &&
                  static_cast<int64_t>(groups.size()) == rows_,
              "values must be a contiguous float64 CPU tensor of one value per group");
  const WatchedEntry& e = entries_[entry];
  const double* v = values.data_ptr<double>();
  double* table = host.data_ptr<double>();
  for (int64_t r = 0; r < rows_; ++r) {   // every value checked before any write
    if (!in_range(e, v[r])) return r;
  }
  bool switched = false;
  for (int64_t r = 0; r < rows_; ++r) {
    PyObject* group = PyList_GET_ITEM(groups.ptr(), r);
    if (!PyDict_Check(group)) continue;   // the next scan names it
    if (e.index >= 0 || e.zero_flag) {
      // a group without the pair is left as it is, for the next scan to name
      PyObject* current = item_of(value_of(group, e.key.ptr()), e.index);
      if (current == nullptr) continue;
      double was = 0;
      if (e.zero_flag) switched |= !as_number(current, &was) || (was == 0) != (v[r] == 0);
    }
    PyObject* f = PyFloat_FromDouble(v[r]);
    if (f == nullptr) throw py::error_already_set();
    // unwritten since last seen: after this write it is known again; else the next scan looks
    const bool known = versions_[r] != 0 && version_of(group) == versions_[r];
    store(group, e.key.ptr(), e.index, f);   // cannot fail: checked above
    table[r * num_cols_ + e.column] = v[r];
    if (group == slot(r, 0)) {   // a replaced dict stays a slow row for the next scan
      Py_XDECREF(slot(r, entry + 1));
      slot(r, entry + 1) = f;   // takes the reference
      versions_[r] = known ? version_of(group) : 0;
    } else {
      Py_DECREF(f);
    }
  }
  return switched ? -2 : -1;
}

py::object read_column(const py::list& groups, const py::object& key, Py_ssize_t index) {
  const int64_t n = static_cast<int64_t>(groups.size());
  at::Tensor out = at::empty({n}, at::kDouble);
  double* v = out.data_ptr<double>();
  for (int64_t r = 0; r < n; ++r) {
    if (!as_number(item_of(value_of(PyList_GET_ITEM(groups.ptr(), r), key.ptr()), index), &v[r])) {
      return py::none();
    }
  }
  return py::cast(out);
}

int64_t write_column(const py::list& groups, const py::object& key, Py_ssize_t index,
                     const at::Tensor& values) {
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kDouble &&
                  values.is_contiguous() && values.numel() == static_cast<int64_t>(groups.size()),
              "values must be a contiguous float64 CPU tensor of one value per group");
  const int64_t n = values.numel();
  for (int64_t r = 0; r < n; ++r) {   // every group checked before any write
    PyObject* group = PyList_GET_ITEM(groups.ptr(), r);
    if (!PyDict_Check(group) || (index >= 0 && item_of(value_of(group, key.ptr()), index) ==
                                                   nullptr)) {
      return r;
    }
  }
  const double* v = values.data_ptr<double>();
  for (int64_t r = 0; r < n; ++r) {
    py::object f = py::reinterpret_steal<py::object>(PyFloat_FromDouble(v[r]));
    if (!f) throw py::error_already_set();
    store(PyList_GET_ITEM(groups.ptr(), r), key.ptr(), index, f.ptr());
  }
  return -1;
}

}  // namespace fusedopt
