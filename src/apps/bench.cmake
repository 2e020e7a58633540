# Benchmark drivers (owned by the backend/cuda area). Only on CUDA builds; they link no MPI, HDF5,
# Boost or TurboJPEG, so they run on a bare GPU host next to the bundled libraries.
if(DDP_HAVE_CUDA)
  # The trainer's loss scaler is compiled in (one file, no dependencies) rather than linking ddp_train,
  # which would bring HDF5 and MPI.
  add_executable(bench_cuda_train ${CMAKE_CURRENT_SOURCE_DIR}/bench_cuda_train.cpp
                                  ${PROJECT_SOURCE_DIR}/src/train/loss_scaler.cpp)
  target_link_libraries(bench_cuda_train PRIVATE ddp_cuda ddp_nn ddp_core)
  # Every conv of a step with the heuristics' engine against a timed search (tools/gpu_profile.sh).
  add_executable(bench_cuda_conv ${CMAKE_CURRENT_SOURCE_DIR}/bench_cuda_conv.cpp)
  target_link_libraries(bench_cuda_conv PRIVATE ddp_cuda ddp_nn ddp_core)
endif()
