# cmake -DIN=ops.cu -DOUT=ops_emu.cpp -P gen_kernels.cmake
# Rewrites every kernel launch `name<targs><<<cfg>>>(args)` of a .cu file as
# `::ddp::cuda_emu::Launch("name<targs>", cfg)(name<targs>, args)` (emu.h) and nothing else, so g++
# compiles the kernels unchanged. #line keeps compiler messages pointing into the .cu file.
file(READ "${IN}" src)
set(name "([A-Za-z_][A-Za-z0-9_]*(<[^<>;()]*>)?)")
string(REGEX REPLACE "${name}<<<([^>]*)>>>\\(\\)" "::ddp::cuda_emu::Launch(\"\\1\", \\3)(\\1)" src "${src}")
string(REGEX REPLACE "${name}<<<([^>]*)>>>\\(" "::ddp::cuda_emu::Launch(\"\\1\", \\3)(\\1, " src "${src}")
string(FIND "${src}" "<<<" left)
if(NOT left EQUAL -1)
  string(SUBSTRING "${src}" ${left} 80 around)
  message(FATAL_ERROR "gen_kernels.cmake: a launch in ${IN} was not rewritten: ${around}")
endif()
file(WRITE "${OUT}.tmp" "#include \"emu_kernel.h\"\n#line 1 \"${IN}\"\n${src}")
# Only replace the output when it changed (no rebuild of what depends on it otherwise).
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
