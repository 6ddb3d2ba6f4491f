from services.text.main import main

main()
