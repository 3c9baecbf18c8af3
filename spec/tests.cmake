# Every spec file under spec/ runs as one ctest test through the real binary.
file(GLOB KL_SPECS RELATIVE ${CMAKE_SOURCE_DIR}/spec ${CMAKE_SOURCE_DIR}/spec/*_spec.lua)
foreach(s ${KL_SPECS})
  string(REPLACE "_spec.lua" "" name ${s})
  add_test(NAME spec.${name}
    COMMAND $<TARGET_FILE:kubelua> run ${CMAKE_SOURCE_DIR}/spec/runner.lua ${CMAKE_SOURCE_DIR}/spec/${s}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(spec.${name} PROPERTIES TIMEOUT 300)
endforeach()
