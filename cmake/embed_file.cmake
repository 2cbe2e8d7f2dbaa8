# Turns a data file into a C++ source that defines `std::string_view NAME()` in namespace
# tokgate::embedded. Runs at build time, so editing the data file re-embeds it.
# Usage (script mode): cmake -DINPUT=f -DOUTPUT=f.cpp -DNAME=ident -P embed_file.cmake
file(READ "${INPUT}" content HEX)
string(LENGTH "${content}" hex_length)
math(EXPR byte_count "${hex_length} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
"// Generated from ${INPUT}; do not edit.\n#include <string_view>\nnamespace tokgate::embedded {\nnamespace {\nconstexpr unsigned char data[] = {\n${bytes}0};\n}\nstd::string_view ${NAME}() { return {reinterpret_cast<const char*>(data), ${byte_count}}; }\n}  // namespace tokgate::embedded\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
