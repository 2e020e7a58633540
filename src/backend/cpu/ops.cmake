# ddp_cpu_ops: the fp32 NCHW CPU ops (OpenMP threads, OpenBLAS GEMM run single-threaded per worker).
add_library(ddp_cpu_ops ${CMAKE_CURRENT_LIST_DIR}/ops.cpp ${CMAKE_CURRENT_LIST_DIR}/ops_conv.cpp)
target_link_libraries(ddp_cpu_ops PUBLIC ddp_core BLAS::BLAS OpenMP::OpenMP_CXX)
target_include_directories(ddp_cpu_ops PRIVATE ${OPENBLAS_INCLUDE_DIR})
