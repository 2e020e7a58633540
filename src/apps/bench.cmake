# Benchmark drivers (owned by the backend/cuda area). Only on CUDA builds; they link no MPI, HDF5,
# Boost or TurboJPEG, so they run on a bare GPU host next to the bundled libraries.
if(DDP_HAVE_CUDA)
  add_executable(bench_cuda_train ${CMAKE_CURRENT_SOURCE_DIR}/bench_cuda_train.cpp)
  target_link_libraries(bench_cuda_train PRIVATE ddp_cuda ddp_nn ddp_core)
endif()
