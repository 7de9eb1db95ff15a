// The service of examples/thrift_service.py, loaded at run time with
// thriftpy2.load(): no generated code.

enum Operation {
  ADD = 1,
  SUBTRACT = 2,
  MULTIPLY = 3,
  DIVIDE = 4,
}

struct Work {
  1: i64 left,
  2: i64 right,
  3: Operation op,
}

exception InvalidOperation {
  1: Operation op,
  2: string why,
}

service Calculator {
  void ping(),
  i64 add(1: i64 a, 2: i64 b),
  i64 calculate(1: Work work) throws (1: InvalidOperation error),
  string reverse(1: string text),
}
