# xgrammar's C++ core (structured output), from the sources scripts/fetch-xgrammar.sh puts in
# PP_XGRAMMAR_DIR. Found: target pp_xgrammar and PP_HAVE_XGRAMMAR ON; absent: pp builds without
# structured output, and a request that asks for it gets a clear error (never an unconstrained
# answer). The library is compiled without pp's warnings, sanitizers or fuzz instrumentation:
# it is not our code to check, and leaving it plain keeps the sanitized tree's build short.
set(_pp_xgrammar_default "$ENV{HOME}/.cache/pp/xgrammar-0.2.9")
if(DEFINED ENV{PP_XGRAMMAR_DIR})
  set(_pp_xgrammar_default "$ENV{PP_XGRAMMAR_DIR}")
endif()
set(PP_XGRAMMAR_DIR "${_pp_xgrammar_default}" CACHE PATH
    "xgrammar's sources (scripts/fetch-xgrammar.sh); empty or absent: no structured output")
set(PP_HAVE_XGRAMMAR OFF)
if(PP_XGRAMMAR_DIR AND EXISTS "${PP_XGRAMMAR_DIR}/include/xgrammar/xgrammar.h")
  file(GLOB _pp_xgrammar_sources CONFIGURE_DEPENDS "${PP_XGRAMMAR_DIR}/cpp/*.cc"
       "${PP_XGRAMMAR_DIR}/cpp/support/*.cc" "${PP_XGRAMMAR_DIR}/cpp/converter_ext/*.cc")
  add_library(pp_xgrammar STATIC ${_pp_xgrammar_sources})
  # Not the directory's options (warnings, sanitizers, fuzz coverage): only these.
  set_property(TARGET pp_xgrammar PROPERTY COMPILE_OPTIONS -w)
  set_target_properties(pp_xgrammar PROPERTIES CXX_STANDARD 17 POSITION_INDEPENDENT_CODE ON)
  target_include_directories(pp_xgrammar SYSTEM PUBLIC "${PP_XGRAMMAR_DIR}/include"
                             "${PP_XGRAMMAR_DIR}/3rdparty/picojson"
                             "${PP_XGRAMMAR_DIR}/3rdparty/dlpack/include")
  target_compile_definitions(pp_xgrammar PUBLIC XGRAMMAR_ENABLE_CPPTRACE=0
                             XGRAMMAR_ENABLE_INTERNAL_CHECK=0)
  target_link_libraries(pp_xgrammar PUBLIC Threads::Threads)
  set(PP_HAVE_XGRAMMAR ON)
  message(STATUS "xgrammar: ${PP_XGRAMMAR_DIR} (structured output on)")
else()
  message(STATUS "xgrammar: not found in '${PP_XGRAMMAR_DIR}' (structured output off; "
                 "scripts/fetch-xgrammar.sh fetches it)")
endif()
