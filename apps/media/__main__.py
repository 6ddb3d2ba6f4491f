from services.runtime.bootstrap import prepare_process

prepare_process()   # before gRPC is imported

from apps.media.main import main  # noqa: E402

main()
