#include "ddp/core/h5.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <mutex>

namespace ddp::detail {
[[noreturn]] void fail_h5(const char* file, int line, const char* expr) {
  // The HDF5 error stack holds the library's reason; take its innermost message.
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned n, const H5E_error2_t* e, void* data) -> herr_t {
        auto* r = static_cast<std::string*>(data);
        if (n == 0 && e->desc) *r = e->desc;
        return 0;
      },
      &reason);
  H5Eclear2(H5E_DEFAULT);
  fail(file, line, str("HDF5 call failed: ", expr, reason.empty() ? "" : " (" + reason + ")"));
}
}  // namespace ddp::detail

namespace ddp::h5 {

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    close();
    id_ = o.id_;
    o.id_ = -1;
  }
  return *this;
}

void Handle::close() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: H5Fclose(id_); break;
    case H5I_GROUP: H5Gclose(id_); break;
    case H5I_DATASET: H5Dclose(id_); break;
    case H5I_DATASPACE: H5Sclose(id_); break;
    case H5I_DATATYPE: H5Tclose(id_); break;
    case H5I_ATTR: H5Aclose(id_); break;
    case H5I_GENPROP_LST: H5Pclose(id_); break;
    default: break;
  }
  id_ = -1;
}

void skip_teardown_at_exit() { H5dont_atexit(); }

void silence_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

bool exists(hid_t loc, const std::string& path) {
  silence_errors();
  // H5Lexists fails on a missing intermediate group, so walk the path one component at a time.
  size_t pos = 0;
  while (true) {
    size_t next = path.find('/', pos);
    std::string prefix = path.substr(0, next);
    if (!prefix.empty() && H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) return true;
    pos = next + 1;
  }
}

Handle create_file(const std::string& path) {
  silence_errors();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) {
    H5Eclear2(H5E_DEFAULT);
    DDP_FAIL("cannot create HDF5 file '", path, "': ", std::strerror(errno ? errno : EACCES));
  }
  return Handle(f);
}

Handle open_file(const std::string& path, bool writable) {
  silence_errors();
  struct stat st {};
  DDP_CHECK(::stat(path.c_str(), &st) == 0, "cannot open '", path, "': ", std::strerror(errno));
  DDP_CHECK(H5Fis_hdf5(path.c_str()) > 0, "'", path,
            "' is not an HDF5 file (or it is truncated or corrupt)");
  hid_t f = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    H5Eclear2(H5E_DEFAULT);
    DDP_FAIL("cannot open HDF5 file '", path, "' (truncated or corrupt?)");
  }
  return Handle(f);
}

Handle create_group(hid_t loc, const std::string& name) {
  return Handle(H5_CHECK(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT)));
}

std::string file_name(hid_t obj) {
  ssize_t n = H5Fget_name(obj, nullptr, 0);
  if (n <= 0) return "?";
  std::string s(static_cast<size_t>(n), '\0');
  H5Fget_name(obj, s.data(), s.size() + 1);
  return s;
}

static void write_any(hid_t loc, const std::string& name, hid_t mem_type, hid_t file_type, const void* data,
                      const std::vector<hsize_t>& shape) {
  Handle space(H5_CHECK(H5Screate_simple(static_cast<int>(shape.size()), shape.data(), nullptr)));
  Handle lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
  Handle ds(H5Dcreate2(loc, name.c_str(), file_type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT));
  DDP_CHECK(ds.valid(), "cannot create dataset '", name, "' in ", file_name(loc));
  DDP_CHECK(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "cannot write dataset '", name,
            "' in ", file_name(loc), " (disk full?)");
}

void write_f32(hid_t loc, const std::string& name, const float* d, const std::vector<hsize_t>& s) {
  write_any(loc, name, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, d, s);
}

void write_f32_checksummed(hid_t loc, const std::string& name, const float* d, const std::vector<hsize_t>& s) {
  // One chunk per tensor (HDF5 filters need chunked storage; ResNet18's largest tensor is 9.4 MB), with
  // HDF5's Fletcher-32 filter: every H5Dread verifies it, h5py and h5dump read it transparently.
  Handle space(H5_CHECK(H5Screate_simple(static_cast<int>(s.size()), s.data(), nullptr)));
  Handle lcpl(H5_CHECK(H5Pcreate(H5P_LINK_CREATE)));
  H5_CHECK(H5Pset_create_intermediate_group(lcpl, 1));
  Handle dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
  const bool empty = std::find(s.begin(), s.end(), hsize_t{0}) != s.end();
  if (!s.empty() && !empty) {
    H5_CHECK(H5Pset_chunk(dcpl, static_cast<int>(s.size()), s.data()));
    H5_CHECK(H5Pset_fletcher32(dcpl));
  }
  Handle ds(H5Dcreate2(loc, name.c_str(), H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT));
  DDP_CHECK(ds.valid(), "cannot create dataset '", name, "' in ", file_name(loc));
  DDP_CHECK(H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, d) >= 0, "cannot write dataset '", name,
            "' in ", file_name(loc), " (disk full?)");
}
void write_i32(hid_t loc, const std::string& name, const int32_t* d, const std::vector<hsize_t>& s) {
  write_any(loc, name, H5T_NATIVE_INT32, H5T_STD_I32LE, d, s);
}
void write_i64(hid_t loc, const std::string& name, const int64_t* d, const std::vector<hsize_t>& s) {
  write_any(loc, name, H5T_NATIVE_INT64, H5T_STD_I64LE, d, s);
}
void write_u8(hid_t loc, const std::string& name, const uint8_t* d, const std::vector<hsize_t>& s) {
  write_any(loc, name, H5T_NATIVE_UINT8, H5T_STD_U8LE, d, s);
}

std::vector<hsize_t> dataset_shape(hid_t loc, const std::string& name) {
  DDP_CHECK(exists(loc, name), "dataset '", name, "' missing in ", file_name(loc));
  Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)));
  Handle space(H5_CHECK(H5Dget_space(ds)));
  int n = H5_CHECK(H5Sget_simple_extent_ndims(space));
  std::vector<hsize_t> dims(static_cast<size_t>(n));
  H5_CHECK(H5Sget_simple_extent_dims(space, dims.data(), nullptr));
  return dims;
}

static std::string dims_str(const std::vector<hsize_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

static void read_any(hid_t loc, const std::string& name, hid_t mem_type, void* data,
                     const std::vector<hsize_t>& expect) {
  auto shape = dataset_shape(loc, name);
  DDP_CHECK(shape == expect, "dataset '", name, "' in ", file_name(loc), " has shape ", dims_str(shape),
            ", expected ", dims_str(expect));
  Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)));
  DDP_CHECK(H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, "cannot read dataset '", name,
            "' in ", file_name(loc), " (truncated or corrupt file?)");
}

void read_f32(hid_t loc, const std::string& n, float* d, const std::vector<hsize_t>& s) {
  read_any(loc, n, H5T_NATIVE_FLOAT, d, s);
}
void read_i32(hid_t loc, const std::string& n, int32_t* d, const std::vector<hsize_t>& s) {
  read_any(loc, n, H5T_NATIVE_INT32, d, s);
}
void read_i64(hid_t loc, const std::string& n, int64_t* d, const std::vector<hsize_t>& s) {
  read_any(loc, n, H5T_NATIVE_INT64, d, s);
}
void read_u8(hid_t loc, const std::string& n, uint8_t* d, const std::vector<hsize_t>& s) {
  read_any(loc, n, H5T_NATIVE_UINT8, d, s);
}

static Handle make_attr(hid_t obj, const std::string& name, hid_t type) {
  if (H5Aexists(obj, name.c_str()) > 0) H5_CHECK(H5Adelete(obj, name.c_str()));
  Handle space(H5_CHECK(H5Screate(H5S_SCALAR)));
  return Handle(H5_CHECK(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT)));
}

void set_attr(hid_t obj, const std::string& name, int64_t v) {
  Handle a = make_attr(obj, name, H5T_STD_I64LE);
  H5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, &v));
}
void set_attr(hid_t obj, const std::string& name, double v) {
  Handle a = make_attr(obj, name, H5T_IEEE_F64LE);
  H5_CHECK(H5Awrite(a, H5T_NATIVE_DOUBLE, &v));
}
void set_attr(hid_t obj, const std::string& name, const std::string& v) {
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_size(type, H5T_VARIABLE));
  H5_CHECK(H5Tset_cset(type, H5T_CSET_UTF8));
  Handle a = make_attr(obj, name, type);
  const char* p = v.c_str();
  H5_CHECK(H5Awrite(a, type, &p));
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

static Handle open_attr(hid_t obj, const std::string& name) {
  DDP_CHECK(has_attr(obj, name), "attribute '", name, "' missing in ", file_name(obj));
  return Handle(H5_CHECK(H5Aopen(obj, name.c_str(), H5P_DEFAULT)));
}

// A failed read names the attribute and the file (a bare H5_CHECK names only the call).
static void read_attr(hid_t obj, const std::string& name, hid_t a, hid_t mem_type, void* v, const char* what) {
  if (H5Aread(a, mem_type, v) >= 0) return;
  H5Eclear2(H5E_DEFAULT);
  DDP_FAIL("cannot read attribute '", name, "' in ", file_name(obj), " as ", what, " (wrong type or damaged file?)");
}

int64_t get_attr_i64(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  int64_t v = 0;
  read_attr(obj, name, a, H5T_NATIVE_INT64, &v, "an integer");
  return v;
}
double get_attr_f64(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  double v = 0;
  read_attr(obj, name, a, H5T_NATIVE_DOUBLE, &v, "a number");
  return v;
}
std::string get_attr_str(hid_t obj, const std::string& name) {
  Handle a = open_attr(obj, name);
  Handle ftype(H5_CHECK(H5Aget_type(a)));
  DDP_CHECK(H5Tget_class(ftype) == H5T_STRING, "attribute '", name, "' in ", file_name(obj), " is not a string");
  if (H5Tis_variable_str(ftype) > 0) {
    // Read with the attribute's own string type: HDF5 refuses ASCII<->UTF-8 conversion.
    char* p = nullptr;
    read_attr(obj, name, a, ftype, &p, "a string");
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  size_t n = H5Tget_size(ftype);
  std::string s(n, '\0');
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_size(type, n));
  read_attr(obj, name, a, type, s.data(), "a string");
  s.resize(std::strlen(s.c_str()));
  return s;
}

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values) {
  Handle type(H5_CHECK(H5Tcopy(H5T_C_S1)));
  H5_CHECK(H5Tset_size(type, H5T_VARIABLE));
  H5_CHECK(H5Tset_cset(type, H5T_CSET_UTF8));
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (auto& v : values) ptrs.push_back(v.c_str());
  write_any(loc, name, type, type, ptrs.data(), {static_cast<hsize_t>(values.size())});
}

std::vector<std::string> read_strings(hid_t loc, const std::string& name) {
  auto shape = dataset_shape(loc, name);
  DDP_CHECK(shape.size() == 1, "dataset '", name, "' in ", file_name(loc), " is not a 1-D string list");
  Handle ds(H5_CHECK(H5Dopen2(loc, name.c_str(), H5P_DEFAULT)));
  Handle type(H5_CHECK(H5Dget_type(ds)));
  DDP_CHECK(H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) > 0, "dataset '", name, "' in ",
            file_name(loc), " is not a list of variable-length strings");
  std::vector<char*> ptrs(shape[0], nullptr);
  DDP_CHECK(H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) >= 0, "cannot read strings '", name,
            "' in ", file_name(loc));
  std::vector<std::string> out;
  out.reserve(ptrs.size());
  for (char* p : ptrs) out.emplace_back(p ? p : "");
  Handle space(H5_CHECK(H5Dget_space(ds)));
  H5Dvlen_reclaim(type, space, H5P_DEFAULT, ptrs.data());
  return out;
}

}  // namespace ddp::h5
