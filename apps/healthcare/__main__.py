from services.runtime.bootstrap import prepare_process

prepare_process()   # before gRPC is imported

from apps.healthcare.main import main  # noqa: E402

main()
