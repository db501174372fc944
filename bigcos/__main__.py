from bigcos.cli import main

main()
