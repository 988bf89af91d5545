// A C++ WASI program: upper-case file argv[1] into argv[2]. Built with clang++ and libc++.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>

int main(int argc, char **argv) {
    if (argc != 3) { std::cerr << "usage: copy IN OUT\n"; return 2; }
    std::ifstream in(argv[1], std::ios::binary);
    if (!in) { std::cerr << "cannot open " << argv[1] << "\n"; return 1; }
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::toupper(c); });
    std::ofstream out(argv[2], std::ios::binary);
    out << text;
    std::cout << "c++: copied " << text.size() << " bytes" << std::endl;
    return 0;
}
