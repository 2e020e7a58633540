# cmake -DIN=ops.cu -DOUT=ops_emu.cpp -P gen_kernels.cmake
# Rewrites every kernel launch `name<targs><<<cfg>>>(args)` of a .cu file as
# `::ddp::cuda_emu::Launch("name<targs>", cfg)(name<targs>, args)` (emu.h), with
# `.max_threads(N)` after `Launch(...)` for a kernel declared with __launch_bounds__(N), and nothing
# else, so g++ compiles the kernels unchanged. #line keeps compiler messages pointing into the .cu file.
file(READ "${IN}" src)
set(name "([A-Za-z_][A-Za-z0-9_]*(<[^<>;()]*>)?)")
# A kernel declared `__launch_bounds__(N, ...) k`: its launches become `Launch(...).max_threads(N)`,
# so one with more than N threads per block fails as on a GPU (emu.h). N must be visible where k is
# launched (a constant, not a template parameter of k: the emulation then fails to compile).
string(REGEX MATCHALL "__launch_bounds__[ \t]*\\([^()]*\\)[ \t\r\n]*[A-Za-z_][A-Za-z0-9_]*" bounded "${src}")
foreach(decl IN LISTS bounded)
  string(REGEX MATCH "^__launch_bounds__[ \t]*\\(([^(),]*)[^()]*\\)[ \t\r\n]*([A-Za-z_][A-Za-z0-9_]*)$" _ "${decl}")
  string(STRIP "${CMAKE_MATCH_1}" bound)
  set(k "${CMAKE_MATCH_2}")
  set(launch "([^A-Za-z0-9_])(${k}(<[^<>;()]*>)?)<<<([^>]*)>>>\\(")
  string(REGEX REPLACE "${launch}\\)" "\\1::ddp::cuda_emu::Launch(\"\\2\", \\4).max_threads(${bound})(\\2)" src "${src}")
  string(REGEX REPLACE "${launch}" "\\1::ddp::cuda_emu::Launch(\"\\2\", \\4).max_threads(${bound})(\\2, " src "${src}")
endforeach()
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
